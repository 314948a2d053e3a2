"""Does the listener's protection cost the hot path? And does it hold under a slow-client attack?

    python bench/listener.py [--duration 3] [--rounds 3] [--attackers 300]

Starts `bench/mock_upstream.py` and two gateways (`relaygate serve`, one worker): the
bench config as `run.py` writes it, and the same with `server.cors` on. Per round it
measures JSON chat requests at concurrency 1 and 64:

- `gateway`: the bench config (the listener's limits at their defaults);
- `gateway+cors`: CORS on, every request carrying an allowed `Origin`;
- `gateway under attack`: the bench config while `--attackers` connections are held
  open against it, half idle, half sending their headers a byte every 0.5 s (slowloris).

It prints requests/s, gateway CPU per request and p50/p99 latency; with the attack, the
numbers should stay near the plain gateway's (the attackers cost a timer each until
`server.header_timeout` cuts them, and reconnect). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
from pathlib import Path

import uvloop
from loadgen import build_request, run_load
from run import (
    CLIENT_KEY,
    HOST,
    chat_body,
    cpu_seconds,
    gateway_config,
    percentile,
    processes,
    start_gateway,
    start_mock,
)

ORIGIN = "https://app.example.com"


def cors_config(workdir: Path, upstream_port: int) -> Path:
    plain = gateway_config(workdir, upstream_port).read_text()
    path = workdir / "gateway-cors.yaml"
    path.write_text(plain.replace("  log_level: INFO\n", f"  log_level: INFO\n  cors: {{origins: ['{ORIGIN}']}}\n"))
    return path


def raw_request(port: int, origin: bool) -> bytes:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
    if origin:
        headers["Origin"] = ORIGIN
    return build_request(HOST, port, "/v1/chat/completions", chat_body(False), headers)


async def attackers(port: int, count: int, stop: asyncio.Event) -> int:
    """Hold `count` connections: half idle, half dripping headers. Reconnect when cut; return cuts."""
    cuts = 0

    async def one(drip: bool) -> None:
        nonlocal cuts
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            try:
                if drip:
                    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
                while not stop.is_set() and not reader.at_eof():
                    if drip:
                        writer.write(b"a")
                        await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await reader.read(4096)
                cuts += not stop.is_set()
            except ConnectionError:
                cuts += 1
            finally:
                writer.close()

    tasks = [asyncio.create_task(one(i % 2 == 0)) for i in range(count)]
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cuts


async def cell(port: int, pid: int, raw: bytes, concurrency: int, duration: float) -> tuple[float, float, list[float]]:
    await run_load(HOST, port, raw, concurrency=concurrency, duration=0.5, requests=None)
    cpu0 = cpu_seconds(pid)
    result = await run_load(HOST, port, raw, concurrency=concurrency, duration=duration, requests=None)
    cpu = (cpu_seconds(pid) - cpu0) / max(result.count, 1) * 1e3
    return result.rps, cpu, result.latencies


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-bench-listener-"))
    print(f"work dir: {workdir}")
    with processes() as procs:
        mock = start_mock(workdir, 20)
        procs.append(mock)
        plain = start_gateway(workdir, gateway_config(workdir, mock.port), str(workdir / "access.log"))
        procs.append(plain)
        cors = start_gateway(workdir, cors_config(workdir, mock.port), str(workdir / "access-cors.log"))
        procs.append(cors)
        rows: dict[tuple[str, int], list[tuple[float, float, list[float]]]] = {}
        cuts = 0
        for _ in range(args.rounds):
            for concurrency in (1, 64):
                rows.setdefault(("gateway", concurrency), []).append(
                    await cell(plain.port, plain.pid, raw_request(plain.port, False), concurrency, args.duration))
                rows.setdefault(("gateway+cors", concurrency), []).append(
                    await cell(cors.port, cors.pid, raw_request(cors.port, True), concurrency, args.duration))
                stop = asyncio.Event()
                attack = asyncio.create_task(attackers(plain.port, args.attackers, stop))
                await asyncio.sleep(0.5)
                rows.setdefault(("gateway under attack", concurrency), []).append(
                    await cell(plain.port, plain.pid, raw_request(plain.port, False), concurrency, args.duration))
                stop.set()
                cuts += await attack
        print("\n| target | conc | req/s | gateway CPU ms/req | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
        for (name, concurrency), samples in rows.items():
            latencies = [x for _, _, lat in samples for x in lat]
            print(f"| {name} | {concurrency} | {statistics.median(s[0] for s in samples):.0f} "
                  f"| {statistics.median(s[1] for s in samples):.3f} | {percentile(latencies, 0.5) * 1e3:.3f} "
                  f"| {percentile(latencies, 0.99) * 1e3:.3f} |")
        print(f"\nattacker connections cut by the gateway: {cuts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attackers", type=int, default=300, help="slow/idle connections held during the attack")
    args = parser.parse_args()
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
