"""/metrics under `serve --workers 2` (the sum over workers), and a real Prometheus scraping it."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from core_helpers import until
from prometheus_client.multiprocess import MultiProcessCollector
from telemetry_helpers import Served, scrape

from proxy.testing import PrometheusServer

CONFIG = """\
providers:
  demo: {type: demo}
routes:
  - {model: demo-chat, to: demo}
  - {model: "*", to: demo}
"""


def _chat(url: str, model: str = "demo-chat") -> int:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "two words"}]})
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # a new connection each: spread over the workers
        resp.read()
        return int(resp.status)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Served]:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    with Served(config, "--workers", "2") as served:
        # Healthy means one worker listens; the test needs both.
        assert until(lambda: len(re.findall(r"serving on .* \(pid \d+\)", served.stderr)) == 2), served.stderr
        yield served


def _metrics_dir(served: Served) -> Path:
    match = re.search(r"metrics of 2 workers are summed in (\S+)", served.stderr)
    assert match, served.stderr
    return Path(match.group(1))


def _per_worker(directory: Path) -> dict[str, float]:
    """relaygate_requests_total as each worker wrote it (one file per process)."""
    out = {}
    for path in directory.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        out[path.stem] = sum(s.value for f in families for s in f.samples if s.name == "relaygate_requests_total")
    return out


def test_workers_report_the_sum_and_the_supervisor_cleans_up(workers: Served) -> None:
    directory = _metrics_dir(workers)
    assert directory.is_dir()
    sent = 40
    for _ in range(sent):
        assert _chat(workers.url) == 200
    # A request is counted once its response has ended: just after the client has read it.
    assert until(lambda: sum(_per_worker(directory).values()) == sent)
    shares = _per_worker(directory)
    assert len(shares) == 2
    assert all(shares.values()), f"one worker served everything: {shares}"
    for _ in range(8):  # whichever worker answers the scrape
        got = scrape(workers.url)
        assert got.total("relaygate_requests_total", route="demo-chat", status="200", client="anonymous") == sent
        assert got.total("gen_ai_server_request_duration_seconds_count") == sent
        tokens_in = got.total("relaygate_tokens_total", type="input")
        assert tokens_in > 0 and got.total("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == tokens_in
        assert got.total("relaygate_inflight_requests") == 0
        assert "relaygate_fallbacks" in got.families  # every family, although no worker wrote it
        assert got.total("relaygate_config_reloads_total", result="success") == 0
    workers.signal()
    assert workers.wait() == 0
    assert not directory.exists()


@pytest.fixture
def prometheus(workers: Served) -> Iterator[PrometheusServer]:
    """A real Prometheus on a free loopback port, scraping the gateway every second."""
    with PrometheusServer([f"127.0.0.1:{workers.port}"], interval=1) as server:
        yield server


def test_a_real_prometheus_scrapes_the_workers(workers: Served, prometheus: PrometheusServer) -> None:
    for _ in range(6):
        assert _chat(workers.url) == 200
    for model in ("other-a", "other-b"):
        assert _chat(workers.url, model) == 200

    def seen() -> bool:
        result = prometheus.query('sum(relaygate_requests_total{status="200"})')
        return bool(result) and float(result[0]["value"][1]) == 8

    assert until(seen, timeout=30), (prometheus.query("relaygate_requests_total"), prometheus.targets_health())
    series = prometheus.query('relaygate_requests_total{route="demo-chat"}')
    assert len(series) == 1
    labels = series[0]["metric"]
    assert labels["model"] == "demo-chat" and labels["provider"] == "demo" and labels["client"] == "anonymous"
    assert labels.get("error_type", "") == ""  # Prometheus drops empty labels
    assert float(series[0]["value"][1]) == 6
    by_route = prometheus.query("sum by (route) (relaygate_requests_total)")
    assert {r["metric"]["route"]: float(r["value"][1]) for r in by_route} == {"demo-chat": 6, "*": 2}
    health = prometheus.targets_health()
    assert [t["health"] for t in health] == ["up"], health
    assert prometheus.query("gen_ai_client_token_usage_count")  # the histograms arrive too
