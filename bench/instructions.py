"""Instructions per request, counted by valgrind's callgrind: a cost that does not drift.

This VM's speed drifts by ±20 % from minute to minute and other people's jobs share its
two cores, so CPU-time ratios between two builds need many interleaved rounds and still
wobble by several per cent. An instruction count does not: the same build, config and
request give the same count, whatever else the machine is doing. It is the number to
price a change with (each feature side by side with the build or config without it);
`run.py` remains the measure of throughput and latency.

Each variant runs `relaygate serve` under callgrind with collection off, warms up, turns
collection on for exactly N sequential requests on one keep-alive connection (JSON or
SSE, the 1 KB chat of `run.py`), and reads the total instruction count of that window.
Instructions include the interpreter's and the C libraries' (uvloop, llhttp, orjson):
everything the gateway process executes for those requests.

    python bench/instructions.py                          # this build: default config, metrics off
    python bench/instructions.py --ref 137d08f            # beside a git ref's build (core plugins only)
    python bench/instructions.py --variants default,aiohttp,no-metrics,limits,responses

Needs valgrind (Debian package) and, for `limits`, redis-server. About 20 s per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, connect, run_load
from run import (
    BENCH,
    CLIENT_KEY,
    HOST,
    REF_PLUGINS,
    Proc,
    chat_request,
    free_port,
    ref_tree,
    spawn,
    start_mock,
    wait_ready,
)

from proxy.testing import RedisServer


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    path: str = "/v1/chat/completions"
    provider_extra: str = ""
    yaml_extra: str = ""  # top-level blocks
    key_extra: str = ""  # added to the client key's mapping
    route_extra: str = ""  # added to the route's mapping
    redis: bool = False
    ref: bool = False  # the --ref build
    bare: bool = False  # bench/bare_forwarder.py instead of the gateway

    def body(self, stream: bool) -> bytes:
        chat = chat_request(stream)
        if self.path != "/v1/responses":
            return orjson.dumps(chat)
        messages = chat["messages"]
        request = {"model": chat["model"], "input": [{"role": m["role"], "content": m["content"]} for m in messages],
                   "max_output_tokens": chat.get("max_tokens") or 256, "stream": stream, "store": False}
        return orjson.dumps(request)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("default", "this build, the default config (metrics on, no limits)"),
        Variant("no-metrics", "this build, telemetry.metrics: false", yaml_extra="telemetry: {metrics: false}\n"),
        Variant("aiohttp", "this build, the provider on transport: aiohttp", provider_extra=", transport: aiohttp"),
        Variant("limits", "this build, key rpm + tpm and a route price, on Redis",
                key_extra=", limits: {rpm: 100000000, tpm: 1000000000}",
                route_extra=", price: {input: 2.5, output: 10, cached_input: 1.25}", redis=True),
        Variant("responses", "this build, the same chat as a translated Responses request",
                path="/v1/responses", provider_extra=", responses: translate"),
    )
}
REF = Variant("ref", "the --ref build, its default config", ref=True)
VARIANTS["bare"] = Variant("bare", "the bare aiohttp forwarder (DESIGN §3's yardstick)", bare=True)


def config_text(variant: Variant, upstream: int, redis_url: str | None, only: bool) -> str:
    text = f"plugins: {{only: {REF_PLUGINS}}}\n" if only else ""
    text += (
        "server: {host: 127.0.0.1, log_level: INFO}\n"
        "clients:\n  keys:\n"
        f"    - {{name: bench, key: {CLIENT_KEY}{variant.key_extra}}}\n"
        "providers:\n"
        f"  up: {{type: openai, base_url: 'http://127.0.0.1:{upstream}/v1', api_key: sk-bench,"
        f" max_connections: 64{variant.provider_extra}}}\n"
        "routes:\n"
        f'  - {{model: "*", to: up{variant.route_extra}}}\n'
    ) + variant.yaml_extra
    if redis_url:
        text += f"state: {{redis: '{redis_url}'}}\n"
    return text


def _total(out_prefix: str) -> int:
    """The instruction total of the newest callgrind dump."""
    dumps = sorted(glob.glob(out_prefix + "*"), key=os.path.getmtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    text = Path(dumps[-1]).read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no instruction total in {dumps[-1]}")
    return int(match.group(1))


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


async def _requests(port: int, raw: bytes, n: int, concurrency: int = 1) -> None:
    if concurrency > 1:
        result = await run_load(HOST, port, raw, concurrency=concurrency, duration=None, requests=n)
        if result.errors:
            raise RuntimeError(f"{result.errors} requests failed")
        return
    conn = await connect(HOST, port)
    try:
        for _ in range(n):
            status = await conn.request(raw)
            if status != 200:
                raise RuntimeError(f"the gateway answered {status}")
    finally:
        if conn.transport is not None:
            conn.transport.close()


def count(variant: Variant, workdir: Path, mock: Proc, tree: Path | None, *, n: int, warm: int, stream: bool,
          only: bool, concurrency: int = 1) -> float:
    """Instructions per request of one variant (N requests inside the counted window)."""
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(RedisServer()).url if variant.redis else None
        config = workdir / f"{variant.name}.yaml"
        config.write_text(config_text(variant, mock.port, redis_url, only))
        port = free_port()
        out = str(workdir / f"callgrind.{variant.name}.{'stream' if stream else 'json'}")
        program = ([sys.executable, str(BENCH / "bare_forwarder.py"), "--port", str(port),
                    "--upstream", f"http://{HOST}:{mock.port}"] if variant.bare else
                   [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)])  # fmt: skip
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *program]
        proc = spawn(f"gw-{variant.name}", argv, port, workdir, stdout=os.devnull,
                     pythonpath=tree if variant.ref else None)
        stack.callback(proc.stop)
        wait_ready(proc, timeout=180)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
        raw = build_request(HOST, port, variant.path, variant.body(stream), headers)
        asyncio.run(_requests(port, raw, warm, concurrency))
        _control(proc.popen.pid, "-i", "on")
        asyncio.run(_requests(port, raw, n, concurrency))
        time.sleep(0.2)  # the access log's flush and the last callbacks run inside the window
        _control(proc.popen.pid, "-d")
        _control(proc.popen.pid, "-i", "off")
        return _total(out) / n


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relaygate-instr-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="default,no-metrics", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--ref", help="also count this git ref's build (core plugins only, as run.py --ref)")
    parser.add_argument("--mode", choices=("json", "stream", "both"), default="both")
    parser.add_argument("--requests", type=int, default=300, help="requests counted per variant and mode")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1, help="connections with a request in flight")
    parser.add_argument("--keep", help="copy the callgrind dumps here (for callgrind_annotate)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    variants = [VARIANTS[v] for v in args.variants.split(",") if v]
    if args.ref:
        variants.insert(0, REF)
    modes = ("json", "stream") if args.mode == "both" else (args.mode,)
    with _workdir() as workdir, ref_tree(args.ref) as tree, contextlib.ExitStack() as stack:
        mock = start_mock(workdir, 20)
        stack.callback(mock.stop)
        results: dict[tuple[str, str], float] = {}
        for variant in variants:
            for mode in modes:
                per = count(variant, workdir, mock, tree, n=args.requests, warm=args.warmup,
                            stream=mode == "stream", only=args.ref is not None,
                            concurrency=args.concurrency)  # fmt: skip
                results[(variant.name, mode)] = per
                print(f"  .. {variant.name} {mode}: {per / 1e3:,.0f} k instructions/request", flush=True)
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for dump in glob.glob(str(workdir / "callgrind.*")):
                shutil.copy(dump, args.keep)
        base: Callable[[str], float | None] = lambda mode: results.get((variants[0].name, mode))  # noqa: E731
        print(f"\n| variant | what | mode | k instructions / request | ÷ {variants[0].name} |")
        print("|---|---|---|---:|---:|")
        for variant in variants:
            for mode in modes:
                per, first = results[(variant.name, mode)], base(mode)
                ratio = f"{per / first:.3f}" if first else "—"
                what = variant.what if variant.name != "ref" else f"git ref {args.ref}"
                print(f"| {variant.name} | {what} | {mode} | {per / 1e3:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
