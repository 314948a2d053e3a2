"""Sample the gateway (or the bare forwarder) with py-spy under load and print its hot spots.

    pip install py-spy                       # once, into the venv
    python bench/profile.py --target gateway --mode json --concurrency 64 --seconds 8

Starts the mock and the target as `run.py` does, warms up, then records with py-spy
(500 Hz, non-blocking, Python frames only) while the load runs, and prints the share of
samples by file, by function (own time) and the inclusive share of relaygate's
functions. Native time (uvloop, the kernel's loopback send) shows up under the Python
frame that called it. Keep the raw samples with `--raw FILE` for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import run_load
from run import HOST, Proc, cpu_seconds, gateway_config, request_bytes, start_bare, start_gateway, start_mock


def summarize(raw: str, top: int) -> None:
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += n
        match = re.search(r"\(([^()]*)\)$", frames[-1])
        by_file[match.group(1) if match else frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        print("no samples")
        return
    print(f"{total} samples\n\n## own time by file")
    for name, n in by_file.most_common(top):
        print(f"{n / total * 100:5.1f}%  {name}")
    print("\n## own time by function")
    for name, n in own.most_common(top):
        print(f"{n / total * 100:5.1f}%  {name}")
    print("\n## inclusive, relaygate's own functions")
    shown = [(name, n) for name, n in inclusive.most_common() if "proxy/" in name or "relaygate" in name]
    for name, n in shown[:top]:
        print(f"{n / total * 100:5.1f}%  {name}")


def start_pyspy(pyspy: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "500",
            "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main_async(args: argparse.Namespace) -> None:
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-profile-"))
    raw_path = Path(args.raw) if args.raw else workdir / "samples.txt"
    procs: list[Proc] = []
    try:
        mock = start_mock(workdir, args.chunks)
        procs.append(mock)
        if args.target == "gateway":
            proc = start_gateway(workdir, gateway_config(workdir, mock.port), str(workdir / "access.log"))
        else:
            proc = start_bare(workdir, mock.port)
        procs.append(proc)
        raw = request_bytes(proc.port, args.mode == "stream")
        await run_load(HOST, proc.port, raw, concurrency=args.concurrency, duration=1.0, requests=None)
        spy = start_pyspy(pyspy, proc.pid, args.seconds, raw_path)
        await asyncio.sleep(0.5)  # py-spy attaches
        cpu0 = cpu_seconds(proc.pid)
        result = await run_load(HOST, proc.port, raw, concurrency=args.concurrency, duration=args.seconds - 1,
                                requests=None)
        cpu = (cpu_seconds(proc.pid) - cpu0) / max(result.count, 1) * 1e3
        await asyncio.to_thread(spy.wait, 30)
    finally:
        for p in reversed(procs):
            p.stop()
    print(f"# {args.target} {args.mode} c={args.concurrency}: {result.rps:,.0f} req/s, "
          f"{cpu:.3f} ms CPU/request (py-spy running)\n")
    summarize(await asyncio.to_thread(raw_path.read_text), args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description="py-spy hot spots of the gateway under load.")
    parser.add_argument("--target", choices=("gateway", "bare"), default="gateway")
    parser.add_argument("--mode", choices=("json", "stream"), default="json")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="recording length (at least 2)")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", help="keep py-spy's raw (collapsed) samples in this file")
    args = parser.parse_args()
    args.seconds = max(args.seconds, 2.0)
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
