"""What telemetry costs: gateway CPU per request with metrics off, on, and with traces too.

    python bench/telemetry.py [--concurrency 64] [--duration 3] [--rounds 3] [--mode json,stream]

Three gateways run side by side on the same mock upstream, measured in interleaved rounds
(so the VM's speed drift hits them alike): `off` (`telemetry.metrics: false`, no
`telemetry.otlp`: neither prometheus-client nor OpenTelemetry is imported), `metrics`
(the default: metrics on, traces off) and `traces` (metrics on, and `telemetry.otlp`
exporting every span to a local OTLP/HTTP sink started here). The budget (issue 11):
`metrics` ÷ `off` ≤ 1.05 in gateway CPU per request at 64 connections. Traces off cost
nothing measurable by construction: a gateway without `telemetry.otlp` runs three
`is None` tests per request, and `off` and `metrics` both have traces off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loadgen import run_load
from run import (
    HOST,
    Proc,
    cpu_seconds,
    gateway_config,
    processes,
    request_bytes,
    run_bench,
    spawn,
    start_gateway,
    start_mock,
    wait_ready,
)
from run import free_port as pick_port

GATEWAYS = {
    "off": "telemetry: {metrics: false}\n",
    "metrics": "",
    "traces": "telemetry:\n  otlp: {endpoint: 'http://127.0.0.1:SINK_PORT', service_name: relaygate-bench}\n",
}

SINK = """
import sys
from aiohttp import web

async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")

app = web.Application(client_max_size=64 << 20)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def start_sink(workdir: Path) -> Proc:
    port = pick_port()
    script = workdir / "otlp_sink.py"
    script.write_text(SINK)
    proc = spawn("otlp-sink", [sys.executable, str(script), str(port)], port, workdir)
    wait_ready(proc)
    return proc


def config_for(workdir: Path, mock_port: int, name: str, sink_port: int) -> Path:
    base = gateway_config(workdir, mock_port).read_text()
    path = workdir / f"gateway-{name}.yaml"
    path.write_text(GATEWAYS[name].replace("SINK_PORT", str(sink_port)) + base)
    return path


async def one_cell(gw: Proc, stream: bool, concurrency: int, duration: float) -> tuple[float, float, int]:
    raw = request_bytes(gw.port, stream)
    await run_load(HOST, gw.port, raw, concurrency=concurrency, duration=0.5, requests=None)  # warm-up
    cpu0 = cpu_seconds(gw.pid)
    t0 = time.perf_counter()
    result = await run_load(HOST, gw.port, raw, concurrency=concurrency, duration=duration, requests=None)
    wall = time.perf_counter() - t0
    n = max(result.count, 1)
    return n / wall, (cpu_seconds(gw.pid) - cpu0) / n * 1e3, result.errors


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-telemetry-"))
    modes = args.mode.split(",")
    print(f"# relaygate telemetry cost — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"concurrency {args.concurrency}, {args.rounds} interleaved rounds x {args.duration:g} s, medians; "
          f"work dir {workdir}\n")
    cells: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    with processes() as procs:
        mock = start_mock(workdir, 20)
        procs.append(mock)
        sink = start_sink(workdir)
        procs.append(sink)
        gateways = {}
        for name in GATEWAYS:
            gateways[name] = start_gateway(workdir, config_for(workdir, mock.port, name, sink.port),
                                           str(workdir / f"access-{name}.log"))
            procs.append(gateways[name])
        for _ in range(args.rounds):
            for mode in modes:
                for name, gw in gateways.items():
                    cell = await one_cell(gw, mode == "stream", args.concurrency, args.duration)
                    cells.setdefault((mode, name), []).append(cell)
    print("| mode | gateway | req/s | gateway CPU ms/req | CPU ÷ off | errors |\n|---|---|---:|---:|---:|---:|")
    for mode in modes:
        off = [c[1] for c in cells[(mode, "off")]]
        for name in GATEWAYS:
            got = cells[(mode, name)]
            ratio = statistics.median(c[1] / o for c, o in zip(got, off, strict=True))  # same round, seconds apart
            print(f"| {mode} | {name} | {statistics.median(c[0] for c in got):,.0f} "
                  f"| {statistics.median(c[1] for c in got):.3f} | {ratio:.3f} | {sum(c[2] for c in got)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Gateway CPU per request with telemetry off, metrics, traces.")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="json,stream", help="json, stream or both (comma list)")
    run_bench(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
