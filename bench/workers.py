"""Does `--workers N` scale? The gateway with 1 and with 2 workers, under the same load.

    python bench/workers.py [--workers 1,2] [--concurrency 64] [--duration 3] [--rounds 3]

Starts `bench/mock_upstream.py` and, for each worker count, `relaygate serve --workers N`
(the workers share the port with SO_REUSEPORT), then drives JSON chat requests with
`bench/loadgen.py` from this process. It prints requests/s and where the machine's CPU
went: the gateway (master and workers together), the load generator and the mock. On a
box with fewer cores than gateway workers + load generator + mock, the gateway cannot get
more cores than are left over: read the "gateway cores" column against the machine's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from loadgen import run_load
from run import (
    HOST,
    Proc,
    cpu_seconds,
    gateway_config,
    machine_busy,
    processes,
    relaygate_argv,
    request_bytes,
    run_bench,
    spawn,
    start_mock,
    wait_ready,
)
from run import free_port as pick_port


def family(pid: int) -> list[int]:
    """`pid` and its child processes (the forked workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def family_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):  # a worker that exited
            total += cpu_seconds(pid)
    return total


def start_gateway(workdir: Path, config: Path, workers: int) -> Proc:
    port = pick_port()
    argv = [*relaygate_argv(), "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
    proc = spawn(f"gateway-{workers}w", argv, port, workdir, stdout=os.devnull)
    wait_ready(proc)
    time.sleep(0.5)  # every worker listening, not just the first
    return proc


async def one_cell(gw: Proc, mock: Proc, concurrency: int, duration: float) -> dict[str, float]:
    raw = request_bytes(gw.port, False)
    await run_load(HOST, gw.port, raw, concurrency=concurrency, duration=0.5, requests=None)  # warm-up
    pids = family(gw.pid)
    gw0, mock0, me0, busy0 = family_cpu(pids), cpu_seconds(mock.pid), time.process_time(), machine_busy()
    t0 = time.perf_counter()
    result = await run_load(HOST, gw.port, raw, concurrency=concurrency, duration=duration, requests=None)
    wall = time.perf_counter() - t0
    return {
        "rps": len(result.latencies) / wall,
        "p50": statistics.median(result.latencies) * 1e3,
        "gateway": (family_cpu(pids) - gw0) / wall,
        "loadgen": (time.process_time() - me0) / wall,
        "mock": (cpu_seconds(mock.pid) - mock0) / wall,
        "machine": (machine_busy() - busy0) / wall,
        "errors": result.errors,
    }


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-workers-"))
    counts = [int(w) for w in args.workers.split(",")]
    print(f"# relaygate --workers scaling — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores")
    print(f"JSON chat at concurrency {args.concurrency}, {args.rounds} interleaved rounds x {args.duration:g} s, "
          "medians\n")
    cells: dict[int, list[dict[str, float]]] = {w: [] for w in counts}
    with processes() as procs:
        mock = start_mock(workdir, 20)
        procs.append(mock)
        config = gateway_config(workdir, mock.port)
        gateways = {}
        for w in counts:
            gateways[w] = start_gateway(workdir, config, w)
            procs.append(gateways[w])
        for _ in range(args.rounds):
            for w in counts:
                cells[w].append(await one_cell(gateways[w], mock, args.concurrency, args.duration))
    print("| workers | req/s | p50 ms | gateway cores | load generator cores | mock cores | machine cores busy "
          "| errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in counts:
        med = {k: statistics.median(c[k] for c in cells[w]) for k in cells[w][0]}
        print(f"| {w} | {med['rps']:,.0f} | {med['p50']:.2f} | {med['gateway']:.2f} | {med['loadgen']:.2f} "
              f"| {med['mock']:.2f} | {med['machine']:.2f} | {sum(c['errors'] for c in cells[w]):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="relaygate --workers scaling (loopback only).")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    run_bench(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
