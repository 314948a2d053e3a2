"""What limits cost: the same chat load through a gateway without limits and one with them.

    python bench/limits.py [--concurrency 1,64] [--duration 3] [--rounds 3] [--mode json|stream|both]

Starts `bench/mock_upstream.py`, a private `redis-server`, and two `relaygate serve`
processes side by side: `plain` (bench/run.py's config) and `limits` (the same, plus
`state.redis`, a key with `rpm` + `tpm` limits far above the load, and a route `price`,
so every request is admitted, priced and settled). Interleaved rounds; medians.

Besides req/s and gateway CPU per request it reads Redis's own command statistics over
the measured window: the limits budget is one round trip to admit and one to settle
(two EVALSHA calls per request) and nothing else.

`--pin` gives the gateways the first core and everything else (load generator, mock
upstream, Redis) the other: as in production, where Redis and the clients have machines
of their own, the gateway's throughput is then its own, not what is left of two shared cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis
import run as bench
from loadgen import run_load

from proxy.testing import RedisServer


def limits_config(workdir: Path, upstream_port: int, redis_url: str) -> Path:
    """bench/run.py's config, plus shared state, key limits that never say no, and a price."""
    path = workdir / "gateway-limits.yaml"
    path.write_text(
        "server:\n"
        "  host: 127.0.0.1\n"
        "  log_level: INFO\n"
        f"state: {{redis: '{redis_url}'}}\n"
        "clients:\n"
        "  keys:\n"
        f"    - {{name: bench, key: {bench.CLIENT_KEY}, limits: {{rpm: 100000000, tpm: 1000000000000}}}}\n"
        "providers:\n"
        f"  up: {{type: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', api_key: sk-bench,"
        " max_connections: 2048}\n"
        "routes:\n"
        '  - {model: "*", to: up, price: {input: 2.5, output: 10, cached_input: 1.25}}\n'
    )
    return path


def start_gateway(name: str, workdir: Path, config: Path) -> bench.Proc:
    port = bench.free_port()
    argv = [*bench.relaygate_argv(), "serve", "--config", str(config), "--port", str(port)]
    proc = bench.spawn(name, argv, port, workdir, stdout=str(workdir / f"{name}-access.log"))
    bench.wait_ready(proc)
    return proc


def redis_calls(client: redis.Redis) -> dict[str, int]:
    """EVALSHA calls and network reads (round trips) Redis has served so far."""
    stats = client.info("commandstats")
    reads = client.info("stats")["total_reads_processed"]
    return {"evalsha": int(stats.get("cmdstat_evalsha", {}).get("calls", 0)), "reads": int(reads)}


async def cell(gw: bench.Proc, mock: bench.Proc, stream: bool, concurrency: int, duration: float,
               rds: redis.Redis | None, redis_pid: int) -> dict[str, float]:
    raw = bench.request_bytes(gw.port, stream)
    await run_load(bench.HOST, gw.port, raw, concurrency=concurrency, duration=0.5, requests=None)  # warm-up
    calls0 = redis_calls(rds) if rds is not None else {}
    gw0, mock0, redis0 = bench.cpu_seconds(gw.pid), bench.cpu_seconds(mock.pid), bench.cpu_seconds(redis_pid)
    busy0 = bench.machine_busy()
    t0 = time.perf_counter()
    result = await run_load(bench.HOST, gw.port, raw, concurrency=concurrency, duration=duration, requests=None)
    wall = time.perf_counter() - t0
    n = max(result.count, 1)
    out = {
        "rps": result.count / wall,
        "p50": statistics.median(result.latencies) * 1e3 if result.latencies else float("nan"),
        "cpu": (bench.cpu_seconds(gw.pid) - gw0) / n * 1e3,
        "mock": (bench.cpu_seconds(mock.pid) - mock0) / n * 1e3,
        "redis": (bench.cpu_seconds(redis_pid) - redis0) / n * 1e3 if rds is not None else float("nan"),
        "machine": (bench.machine_busy() - busy0) / wall,
        "errors": result.errors,
        "evalsha": float("nan"),
        "other": float("nan"),
    }
    if rds is not None:
        calls1 = redis_calls(rds)
        out["evalsha"] = (calls1["evalsha"] - calls0["evalsha"]) / n
        out["other"] = (calls1["reads"] - calls0["reads"] - 2) / n  # less the two INFO readings
    return out


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-limits-"))
    concurrency = [int(c) for c in args.concurrency.split(",")]
    modes = {"json": [False], "stream": [True], "both": [False, True]}[args.mode]
    print(f"# relaygate limits on Redis vs none — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores")
    print(f"{args.rounds} interleaved rounds x {args.duration:g} s per cell, medians; work dir {workdir}\n")
    with RedisServer() as redis_server, bench.processes() as procs:
        rds = redis.Redis.from_url(redis_server.url)
        mock = bench.start_mock(workdir, 20)
        procs.append(mock)
        plain = start_gateway("plain", workdir, bench.gateway_config(workdir, mock.port))
        procs.append(plain)
        limited = start_gateway("limits", workdir, limits_config(workdir, mock.port, redis_server.url))
        procs.append(limited)
        if args.pin:
            others = set(range(1, os.cpu_count() or 2))
            for pid in (os.getpid(), mock.pid, redis_server.pid):
                os.sched_setaffinity(pid, others)
            for gw in (plain, limited):
                os.sched_setaffinity(gw.pid, {0})
            print("gateways pinned to core 0; load generator, mock upstream and Redis to the others\n")
        targets = {"plain": (plain, None), "limits": (limited, rds)}
        cells: dict[tuple[bool, int, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for stream in modes:
                for c in concurrency:
                    for name, (gw, client) in targets.items():
                        sample = await cell(gw, mock, stream, c, args.duration, client, redis_server.pid)
                        cells.setdefault((stream, c, name), []).append(sample)
                        print(f"  .. {'stream' if stream else 'json'} c={c} {name}: {sample['rps']:,.0f} req/s",
                              file=sys.stderr, flush=True)
        rds.close()
    print("| mode | conc | gateway | req/s | ÷ plain | p50 ms | gateway CPU ms/req | Redis CPU ms/req "
          "| Redis EVALSHA/req | Redis reads/req | machine cores busy | errors |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for stream in modes:
        for c in concurrency:
            base = statistics.median(s["rps"] for s in cells[(stream, c, "plain")])
            for name in targets:
                samples = cells[(stream, c, name)]
                med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                ratio = med["rps"] / base if base else float("nan")
                print(f"| {'stream' if stream else 'json'} | {c} | {name} | {med['rps']:,.0f} | {bench.fmt(ratio, 2)} "
                      f"| {bench.fmt(med['p50'])} | {bench.fmt(med['cpu'])} | {bench.fmt(med['redis'])} "
                      f"| {bench.fmt(med['evalsha'], 2)} "
                      f"| {bench.fmt(med['other'], 2)} "
                      f"| {med['machine']:.2f} | {sum(s['errors'] for s in samples):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="relaygate: the cost of limits on Redis (loopback only).")
    parser.add_argument("--concurrency", default="1,64", help="comma list")
    parser.add_argument("--mode", choices=("json", "stream", "both"), default="json")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pin", action="store_true", help="gateways on core 0, the rest on the others")
    bench.run_bench(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
