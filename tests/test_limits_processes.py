"""Exactness across processes: two gateways and a `--workers 2` gateway on one Redis.

200 requests arrive at once, spread over all three servers (four worker processes). The
upstream holds every request it receives (a gate) until all 200 have been decided, so
nothing settles meanwhile: exactly the limit reaches the upstream, never one more.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from core_helpers import wait_healthy
from fakes.openai_upstream import Behaviour, FakeOpenAI
from limits_helpers import CHAT, estimate, flush

from proxy.testing import FakeServer, RedisServer, free_port

EACH = {"model": "tpm-m", "messages": CHAT, "max_tokens": 20}
KEYS = ("rpm", "tpm", "conc", "budget", "shared-a", "shared-b")


def _config(upstream: str, redis: str) -> str:
    keys = {
        "rpm": "limits: {rpm: 50}",
        "tpm": f"limits: {{tpm: {50 * estimate(EACH)}}}",
        "conc": "limits: {concurrency: 20}",
        "budget": "budget: {usd: 500, period: month}",
        "shared-a": "",
        "shared-b": "",
    }
    lines = "".join(f"    - {{name: {k}, key: sk-{k}-0123456789{', ' + v if v else ''}}}\n" for k, v in keys.items())
    return (
        f"state: {{redis: '{redis}'}}\n"
        f"clients:\n  keys:\n{lines}"
        f"providers:\n  up: {{type: openai, base_url: '{upstream}/v1', api_key: sk-up}}\n"
        "routes:\n"
        "  - {model: shared-m, to: up, limits: {rpm: 50}}\n"
        "  - {model: budget-m, to: up, price: {input: 0, output: 1000000}}\n"  # $1 per output token
        "  - {model: \"*\", to: up}\n"
    )


@dataclass
class Cluster:
    fake: FakeOpenAI
    gate: threading.Event
    urls: list[str]
    redis_url: str


def _spawn(config: Path, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    with open(log, "ab") as err:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    flush(redis_server.url)
    tmp = tmp_path_factory.mktemp("cluster")
    fake = FakeOpenAI(api_key="sk-up")
    gate = threading.Event()
    with FakeServer(fake.app) as server:
        fake.url = server.url
        config = tmp / "config.yaml"
        config.write_text(_config(server.url, redis_server.url))
        procs: list[subprocess.Popen[bytes]] = []
        urls = []
        try:
            for workers in (1, 1, 2):
                port = free_port()
                proc = _spawn(config, port, workers, tmp / "gateways.log")
                procs.append(proc)
                urls.append(f"http://127.0.0.1:{port}")
                wait_healthy(urls[-1], proc)
            yield Cluster(fake, gate, urls, redis_server.url)
        finally:
            gate.set()
            for proc in procs:
                os.kill(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


async def _burst(cluster: Cluster, plan: list[tuple[str, dict[str, object]]], admitted: int) -> list[tuple[int, str]]:
    """Send every (key, body) of `plan` at once, round-robin over the servers; hold the
    upstream until all but `admitted` have been refused; then let them through.

    Returns (status, error code) per request."""
    fake, model = cluster.fake, plan[0][1]["model"]
    fake.on(str(model), Behaviour(gate=cluster.gate))
    cluster.gate.clear()
    refused = 0
    done = asyncio.Event()

    async def one(session: aiohttp.ClientSession, i: int, key: str, body: dict[str, object]) -> tuple[int, str]:
        nonlocal refused
        url = f"{cluster.urls[i % len(cluster.urls)]}/v1/chat/completions"
        async with session.post(url, json=body, headers={"Authorization": f"Bearer sk-{key}-0123456789"}) as resp:
            data = await resp.json()
            if resp.status != 200:
                refused += 1
                if refused == len(plan) - admitted:
                    done.set()
            return resp.status, (data.get("error") or {}).get("code") or ""

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        tasks = [asyncio.ensure_future(one(session, i, k, b)) for i, (k, b) in enumerate(plan)]
        try:
            await asyncio.wait_for(done.wait(), 30)
            deadline = time.monotonic() + 10
            while sum(r.json["model"] == model for r in list(fake.requests)) < admitted:
                assert time.monotonic() < deadline, "the admitted requests did not reach the upstream"
                await asyncio.sleep(0.01)
        finally:
            cluster.gate.set()
        return await asyncio.gather(*tasks)


def _arrived(cluster: Cluster, model: str) -> int:
    return sum(r.json["model"] == model for r in list(cluster.fake.requests))


async def test_rpm_exact_across_processes_and_workers(cluster: Cluster) -> None:
    body = {"model": "rpm-m", "messages": CHAT}
    results = await _burst(cluster, [("rpm", body)] * 200, 50)
    assert sum(s == 200 for s, _ in results) == 50
    assert {c for s, c in results if s != 200} == {"rate_limit_exceeded"}
    assert _arrived(cluster, "rpm-m") == 50


async def test_tpm_reservations_exact_across_processes(cluster: Cluster) -> None:
    results = await _burst(cluster, [("tpm", EACH)] * 200, 50)
    assert sum(s == 200 for s, _ in results) == 50
    assert {c for s, c in results if s != 200} == {"rate_limit_exceeded"}
    assert _arrived(cluster, "tpm-m") == 50


async def test_concurrency_exact_across_processes(cluster: Cluster) -> None:
    body = {"model": "conc-m", "messages": CHAT}
    results = await _burst(cluster, [("conc", body)] * 200, 20)
    assert sum(s == 200 for s, _ in results) == 20
    assert {c for s, c in results if s != 200} == {"concurrency_limit_exceeded"}
    assert _arrived(cluster, "conc-m") == 20


async def test_route_limit_shared_by_two_keys_across_processes(cluster: Cluster) -> None:
    body = {"model": "shared-m", "messages": CHAT}
    plan = [("shared-a" if i % 2 else "shared-b", body) for i in range(200)]
    results = await _burst(cluster, plan, 50)
    assert sum(s == 200 for s, _ in results) == 50
    assert _arrived(cluster, "shared-m") == 50


async def test_budget_is_never_overspent_by_concurrent_requests(cluster: Cluster) -> None:
    # Each request reserves $10 (10 output tokens at $1; input is free) of a $500 budget.
    body = {"model": "budget-m", "messages": CHAT, "max_tokens": 10}
    results = await _burst(cluster, [("budget", body)] * 200, 50)
    assert sum(s == 200 for s, _ in results) == 50
    assert {c for s, c in results if s != 200} == {"insufficient_quota"}
    # Settled to the real cost ($3 each: "Echo: hello there"), the rest of the budget is
    # spent by more bursts, and never overspent.
    spent = 50 * 3
    while True:
        more = await _burst(cluster, [("budget", body)] * 40, min(40, (500 - spent) // 10))
        ok = sum(s == 200 for s, _ in more)
        spent += 3 * ok
        if ok == 0:
            break
    assert spent <= 500 and spent + 10 > 500
    import redis.asyncio

    async with redis.asyncio.Redis.from_url(cluster.redis_url) as r:
        keys = await r.keys("relaygate:lim:k:budget:s:m*")
        assert len(keys) == 1
        assert int(await r.get(keys[0])) == spent * 1_000_000_000
