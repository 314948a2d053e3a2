"""Microbenchmark of the gateway's own per-request stages, without the network.

Loads the real runtime from the same generated config as `run.py` (every installed
plugin, auth on, access log to a file) and times each stage the request path runs:
`Call` construction, body parse and check, each hook stage, the upstream body and the
usage parse. Best of 5 batches; one core, no sockets, so it is far steadier than the
end-to-end numbers and shows what a change to a stage is worth.

    python bench/stages.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mock_upstream import COMPLETION
from run import CLIENT_KEY, chat_body, gateway_config

from proxy.builtin.accesslog import LineWriter
from proxy.server.body import check_body, parse_json
from proxy.server.runtime import Runtime, load_runtime
from proxy.telemetry import Telemetry
from proxy.types import CHAT, Call
from proxy.upstream.openai_compat import OpenAICompatibleProvider


async def one_batch(runtime: Runtime, n: int) -> dict[str, float]:
    raw = chat_body(False)
    headers = CIMultiDictProxy(
        CIMultiDict({"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"})
    )
    chain = runtime.chain
    spent: dict[str, float] = {}

    def add(stage: str, since: float) -> float:
        now = time.perf_counter()
        spent[stage] = spent.get(stage, 0.0) + now - since
        return now

    for _ in range(n):
        t = time.perf_counter()
        call = Call(
            request_id="req_" + os.urandom(12).hex(), endpoint=CHAT, method="POST", path=CHAT,
            query_string="", headers=headers, config=runtime.config,
        )
        t = add("Call + request id", t)
        call.raw_body = raw
        call.body = parse_json(raw)
        call.model, call.stream = check_body(CHAT, call.body)
        t = add("parse + check body", t)
        call.client = await chain.authenticate(call)
        t = add("authenticate", t)
        call.targets = await chain.route(call)
        t = add("route", t)
        await chain.rewrite_request(call)
        t = add("rewrite_request", t)
        target = call.target = call.targets[0]
        await chain.inject_guardrails(call, target)
        t = add("inject_guardrails", t)
        provider = target.provider
        assert isinstance(provider, OpenAICompatibleProvider)
        await provider.body_for(call, target)
        t = add("body_for (upstream bytes)", t)
        call.usage = provider._usage_of(COMPLETION)
        t = add("usage parse of the answer", t)
        call.status, call.first_byte = 200, time.perf_counter()
        t = time.perf_counter()
        await chain.log_request(call)
        t = add("log_request", t)
        if runtime.metrics is not None:  # telemetry.metrics (default on): once per request, after the log
            runtime.metrics.record(call)
            add("metrics (record)", t)
    return spent


def setup_access_log(workdir: Path) -> None:
    """As `relaygate serve` sets it up, but to a file instead of stdout."""
    access = logging.getLogger("relaygate.access")
    stream = open(workdir / "access.log", "wb")  # noqa: SIM115 - lives as long as the process
    access.addHandler(LineWriter(stream))
    access.propagate = False
    access.setLevel(logging.INFO)


async def main_async(requests: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-stages-"))
    runtime = load_runtime(gateway_config(workdir, 9))  # never started: nothing is sent
    Telemetry(lambda: 0, lambda: runtime).attach(runtime, None)  # as the app does: the metrics registry
    setup_access_log(workdir)
    print("hook implementations per stage:", {k: len(v) for k, v in runtime.chain.stages.items()})
    await one_batch(runtime, 2000)  # warm-up
    best: dict[str, float] = {}
    for _ in range(5):
        spent = await one_batch(runtime, requests)
        best = {k: min(best.get(k, v), v) for k, v in spent.items()}
    print(f"\n| stage | µs/request (best of 5 x {requests:,}) |\n|---|---:|")
    for stage, total in best.items():
        print(f"| {stage} | {total / requests * 1e6:.2f} |")
    print(f"| **total** | **{sum(best.values()) / requests * 1e6:.2f}** |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the gateway's own per-request stages.")
    parser.add_argument("--requests", type=int, default=20000, help="requests per batch")
    args = parser.parse_args()
    asyncio.run(main_async(args.requests))


if __name__ == "__main__":
    main()
