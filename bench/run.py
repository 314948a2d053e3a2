"""relaygate benchmark runner: mock upstream, bare forwarder and gateway on loopback.

    python bench/run.py                       # everything, ~2 minutes
    python bench/run.py --targets gateway,bare --concurrency 1 --mode stream --duration 5
    python bench/run.py --skip-throughput     # only start-up and memory
    python bench/run.py --targets gateway,gateway-aiohttp --ref main --skip-memory
                                              # both transports and main's build, side by side

Starts every process itself on free 127.0.0.1 ports, warms each scenario up, measures
and prints Markdown tables (see bench/README.md for what each number means). Every
phase is bounded by time; nothing here talks to a non-loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, build_request, open_streams, percentile, run_load

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
CLIENT_KEY = "sk-client-bench-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "bare", "gateway", "gateway-aiohttp", "gateway-ref")
#: The plugins every gateway loads when a git ref is compared (like for like across builds).
REF_PLUGINS = "[auth, routing, accesslog, openai, demo]"


# ---------------------------------------------------------------- request bodies


def chat_request(stream: bool, model: str = "bench-model") -> dict[str, Any]:
    """A ~1 KB chat request, like the DESIGN §3 measurement."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant used by a load test. " * 6},
            {"role": "user", "content": "Summarise the benchmark methodology in one paragraph, please. " * 10},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
    }
    if stream:
        body["stream"] = True
    return body


def chat_body(stream: bool, model: str = "bench-model") -> bytes:
    return orjson.dumps(chat_request(stream, model))


def request_bytes(port: int, stream: bool, model: str = "bench-model") -> bytes:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
    return build_request(HOST, port, "/v1/chat/completions", chat_body(stream, model), headers)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class ForeignLoad:
    """How many cores something other than the benchmark's own processes kept busy.

    Other people's test runs on a shared 2-core machine ruin a measurement; the runner
    repeats a cell measured while foreign load exceeded `--max-foreign` cores.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.t0 = time.perf_counter()
        self.busy0 = machine_busy()
        self.own0 = {pid: cpu_seconds(pid) for pid in self.pids}

    def add(self, pid: int) -> None:
        """A process started after the meter (its CPU so far is all inside the window)."""
        self.pids.append(pid)
        self.own0[pid] = 0.0

    def cores(self) -> float:
        elapsed = time.perf_counter() - self.t0
        own = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                own += cpu_seconds(pid) - self.own0[pid]
        return max(0.0, (machine_busy() - self.busy0 - own) / elapsed) if elapsed > 0 else 0.0


def count_lines(path: str) -> int:
    return Path(path).read_bytes().count(b"\n")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_ready(proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} (see its log in the work dir)")
        with contextlib.suppress(OSError), socket.create_connection((HOST, proc.port), timeout=0.2):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{proc.name} did not listen on {proc.port} within {timeout} s")


def spawn(
    name: str, argv: list[str], port: int, workdir: Path, stdout: str | None = None, pythonpath: Path | None = None
) -> Proc:
    out = open(stdout or workdir / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
    err = open(workdir / f"{name}.err", "wb")  # noqa: SIM115
    env = None
    if pythonpath is not None:  # that checkout's `proxy` shadows the installed one
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    popen = subprocess.Popen(argv, stdout=out, stderr=err, cwd=pythonpath or BENCH.parent, env=env)
    out.close()
    err.close()
    return Proc(name, popen, port)


def gateway_config(workdir: Path, upstream_port: int, *, transport: str = "lean", only: bool = False) -> Path:
    """The gateway's config; `transport: aiohttp` for that target, `only` the core plugins (with --ref)."""
    path = workdir / f"gateway-{transport}.yaml"
    extra = f", transport: {transport}" if transport != "lean" else ""
    path.write_text(
        (f"plugins: {{only: {REF_PLUGINS}}}\n" if only else "")
        + "server:\n"
        "  host: 127.0.0.1\n"
        "  log_level: INFO\n"
        "clients:\n"
        "  keys:\n"
        f"    - {{name: bench, key: {CLIENT_KEY}}}\n"
        "providers:\n"
        f"  up: {{type: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', api_key: sk-bench,"
        f" max_connections: 2048{extra}}}\n"
        "routes:\n"
        '  - {model: "*", to: up}\n'
    )
    return path


def relaygate_argv() -> list[str]:
    exe = shutil.which("relaygate")
    return [exe] if exe else [sys.executable, "-m", "proxy"]


def start_mock(workdir: Path, chunks: int) -> Proc:
    port = free_port()
    proc = spawn("mock", [sys.executable, str(BENCH / "mock_upstream.py"), "--port", str(port),
                          "--chunks", str(chunks)], port, workdir)
    wait_ready(proc)
    return proc


def start_bare(workdir: Path, upstream: int) -> Proc:
    port = free_port()
    proc = spawn("bare", [sys.executable, str(BENCH / "bare_forwarder.py"), "--port", str(port),
                          "--upstream", f"http://{HOST}:{upstream}"], port, workdir)
    wait_ready(proc)
    return proc


def start_gateway(
    workdir: Path, config: Path, access_log: str, *, name: str = "gateway", tree: Path | None = None
) -> Proc:
    """`relaygate serve`; with `tree`, the `proxy` package of that checkout (a git ref's build)."""
    port = free_port()
    argv = [*(relaygate_argv() if tree is None else [sys.executable, "-m", "proxy"]),
            "serve", "--config", str(config), "--port", str(port)]
    proc = spawn(name, argv, port, workdir, stdout=access_log, pythonpath=tree)
    wait_ready(proc)
    return proc


@contextlib.contextmanager
def ref_tree(ref: str | None) -> Iterator[Path | None]:
    """A temporary git worktree of `ref` (its `proxy` package runs as `gateway-ref`), removed after."""
    if ref is None:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="relaygate-ref-"))
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), ref],
                   cwd=BENCH.parent, check=True, capture_output=True, timeout=60)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=BENCH.parent,
                       capture_output=True, timeout=60)
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One measured cell of one round."""

    result: Result
    proxy_cpu_ms: float | None  # per request
    mock_cpu_ms: float
    foreign: float  # cores kept busy by other processes meanwhile


@dataclass
class Row:
    """One cell (mode, concurrency, target) over every round."""

    mode: str
    concurrency: int
    target: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [x for s in self.samples for x in s.result.latencies]

    @property
    def ttfbs(self) -> list[float]:
        return [x for s in self.samples for x in s.result.ttfbs]

    @property
    def rps(self) -> float:
        return statistics.median(s.result.rps for s in self.samples)

    @property
    def errors(self) -> int:
        return sum(s.result.errors for s in self.samples)

    @property
    def proxy_cpu_ms(self) -> float | None:
        values = [s.proxy_cpu_ms for s in self.samples if s.proxy_cpu_ms is not None]
        return statistics.median(values) if values else None

    @property
    def mock_cpu_ms(self) -> float:
        return statistics.median(s.mock_cpu_ms for s in self.samples)

    @property
    def foreign(self) -> float:
        return max(s.foreign for s in self.samples)

    def lat(self, q: float) -> float:
        return percentile(self.latencies, q) * 1e3

    def ttfb(self, q: float) -> float:
        return percentile(self.ttfbs, q) * 1e3

    def key(self, q: float) -> float:
        """The latency that the budget talks about: full latency, or TTFB for streams."""
        return self.ttfb(q) if self.mode == "stream" else self.lat(q)


async def measure(
    port: int, proxy_pid: int | None, mock_pid: int, *, stream: bool, concurrency: int,
    duration: float | None, requests: int | None, warmup: float,
) -> Sample:
    raw = request_bytes(port, stream)
    await run_load(HOST, port, raw, concurrency=concurrency, duration=warmup, requests=None)
    meter = ForeignLoad([mock_pid, *([proxy_pid] if proxy_pid else [])])
    cpu0 = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    mock0 = cpu_seconds(mock_pid)
    result = await run_load(HOST, port, raw, concurrency=concurrency, duration=duration, requests=requests)
    n = max(result.count, 1)
    proxy_cpu = (cpu_seconds(proxy_pid) - cpu0) / n * 1e3 if proxy_pid else None
    mock_cpu = (cpu_seconds(mock_pid) - mock0) / n * 1e3
    return Sample(result, proxy_cpu, mock_cpu, meter.cores())


async def measure_quietly(
    port: int, proxy_pid: int | None, mock_pid: int, *, stream: bool, concurrency: int,
    duration: float | None, requests: int | None, warmup: float, max_foreign: float, retries: int,
    retry_until: float,
) -> Sample:
    """`measure`, repeated (after a pause) while other processes load the machine.

    Retries stop at `retry_until` (monotonic): the whole run stays bounded.
    """
    for attempt in range(retries + 1):
        sample = await measure(
            port, proxy_pid, mock_pid, stream=stream, concurrency=concurrency, duration=duration,
            requests=requests, warmup=warmup,
        )
        if sample.foreign <= max_foreign:
            break
        again = attempt < retries and time.monotonic() < retry_until
        print(f"  .. foreign load {sample.foreign:.2f} cores; "
              f"{'retrying' if again else 'keeping it (flagged)'}", file=sys.stderr, flush=True)
        if not again:
            break
        await asyncio.sleep(3.0)
    return sample


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"


def cpu_ratio(gw: Row, bare: Row | None) -> float | None:
    """Median over rounds of gateway CPU/req ÷ bare CPU/req measured seconds apart in the same round.

    The VM's CPU speed drifts by ±20 % from minute to minute; the ratio cancels most of it.
    """
    if bare is None:
        return None
    ratios = [
        g.proxy_cpu_ms / b.proxy_cpu_ms
        for g, b in zip(gw.samples, bare.samples, strict=True)
        if g.proxy_cpu_ms and b.proxy_cpu_ms
    ]
    return statistics.median(ratios) if ratios else None


def throughput_table(rows: list[Row]) -> str:
    by = {(r.mode, r.concurrency, r.target): r for r in rows}
    out = [
        "| mode | conc | target | req/s | p50 ms | p99 ms | TTFB p50 ms | TTFB p99 ms "
        "| added p50 ms | added p99 ms | proxy CPU ms/req | CPU ÷ bare | mock CPU ms/req | foreign cores | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = by.get((r.mode, r.concurrency, "direct"))
        added50 = r.key(0.5) - base.key(0.5) if base and r.target != "direct" else None
        added99 = r.key(0.99) - base.key(0.99) if base and r.target != "direct" else None
        is_gateway = r.target.startswith("gateway")
        ratio = cpu_ratio(r, by.get((r.mode, r.concurrency, "bare"))) if is_gateway else None
        is_stream = r.mode == "stream"
        out.append(
            f"| {r.mode} | {r.concurrency} | {r.target} | {r.rps:,.0f} | {fmt(r.lat(0.5))} "
            f"| {fmt(r.lat(0.99))} | {fmt(r.ttfb(0.5)) if is_stream else '—'} "
            f"| {fmt(r.ttfb(0.99)) if is_stream else '—'} | {fmt(added50)} | {fmt(added99)} "
            f"| {fmt(r.proxy_cpu_ms)} | {fmt(ratio, 2)} | {fmt(r.mock_cpu_ms)} | {r.foreign:.2f} | {r.errors} |"
        )
    return "\n".join(out)


async def startup_time(workdir: Path, config: Path, access_log: str, mock: Proc) -> tuple[float, float, Proc]:
    """(seconds from exec to the first 200 on /v1/chat/completions, foreign cores, the live process)."""
    port = free_port()
    argv = [*relaygate_argv(), "serve", "--config", str(config), "--port", str(port)]
    raw = request_bytes(port, False)
    meter = ForeignLoad([mock.pid])
    t0 = time.perf_counter()
    proc = spawn("gateway-startup", argv, port, workdir, stdout=access_log)
    meter.add(proc.pid)
    deadline = t0 + 20
    while time.perf_counter() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError("the gateway exited during start-up")
        try:
            result = await run_load(HOST, port, raw, concurrency=1, duration=None, requests=1)
            if result.count == 1:
                return time.perf_counter() - t0, meter.cores(), proc
        except OSError:
            pass
        await asyncio.sleep(0.005)
    proc.stop()
    raise RuntimeError("the gateway served nothing within 20 s")


async def memory(proc: Proc, streams: int, timeout: float) -> tuple[float, float, int, float]:
    """(idle RSS, RSS with `streams` open slow streams, streams that started, RSS after closing)."""
    await run_load(HOST, proc.port, request_bytes(proc.port, False), concurrency=1, duration=None, requests=20)
    await asyncio.sleep(0.5)
    idle = rss_mb(proc.pid)
    raw = request_bytes(proc.port, True, model="bench-slow")
    conns, ok = await open_streams(HOST, proc.port, raw, streams, timeout)
    peak = 0.0
    for _ in range(10):  # the streams keep ticking (one event/s); take the largest sample
        peak = max(peak, rss_mb(proc.pid))
        await asyncio.sleep(0.2)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(1.0)
    return idle, peak, ok, rss_mb(proc.pid)


# ---------------------------------------------------------------- main


def versions() -> str:
    from importlib.metadata import version

    return (
        f"Python {platform.python_version()}, relaygate {version('relaygate')}, aiohttp {version('aiohttp')}, "
        f"uvloop {version('uvloop')}, orjson {version('orjson')}, httptools {version('httptools')}, "
        f"{platform.machine()} {os.cpu_count()} CPUs, kernel {platform.release()}"
    )


def plugins_loaded() -> str:
    out = subprocess.run([*relaygate_argv(), "plugins"], capture_output=True, timeout=30, check=True).stdout
    return ", ".join(p["plugin"] for p in orjson.loads(out))


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.stop()


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="relaygate-bench-"))
    access_log = os.devnull if args.access_log == "devnull" else str(workdir / "access.log")
    targets = [t for t in args.targets.split(",") if t]
    if args.ref and "gateway-ref" not in targets:
        targets.append("gateway-ref")
    modes = {"json": [False], "stream": [True], "both": [False, True]}[args.mode]
    conc = [int(c) for c in args.concurrency.split(",")]
    print(f"# relaygate benchmark — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"\n{versions()}")
    print(f"plugins loaded: {plugins_loaded()}")
    print(f"work dir (configs, process logs): {workdir}; access log: {access_log}")
    if args.ref:
        print(f"gateway-ref: the `proxy` package of git ref {args.ref!r}; every gateway loads only {REF_PLUGINS}")
    with processes() as procs, ref_tree(args.ref) as tree:
        mock = start_mock(workdir, args.chunks)
        procs.append(mock)
        only = args.ref is not None
        config = gateway_config(workdir, mock.port, only=only)
        if not args.skip_throughput:
            ports: dict[str, tuple[int, int | None]] = {"direct": (mock.port, None)}
            if "bare" in targets:
                bare = start_bare(workdir, mock.port)
                procs.append(bare)
                ports["bare"] = (bare.port, bare.pid)
            if "gateway" in targets:
                gw = start_gateway(workdir, config, access_log)
                procs.append(gw)
                ports["gateway"] = (gw.port, gw.pid)
            if "gateway-aiohttp" in targets:
                aio_config = gateway_config(workdir, mock.port, transport="aiohttp", only=only)
                gw = start_gateway(workdir, aio_config, access_log, name="gateway-aiohttp")
                procs.append(gw)
                ports["gateway-aiohttp"] = (gw.port, gw.pid)
            if "gateway-ref" in targets:
                if tree is None:
                    raise SystemExit("the gateway-ref target needs --ref REF")
                gw = start_gateway(workdir, config, access_log, name="gateway-ref", tree=tree)
                procs.append(gw)
                ports["gateway-ref"] = (gw.port, gw.pid)
            order = ["direct", *(t for t in TARGETS[1:] if t in targets)]
            rows = {
                (stream, c, t): Row("stream" if stream else "json", c, t)
                for stream in modes for c in conc for t in order
            }
            what = f"{args.requests} requests" if args.requests else f"{args.duration:g} s"
            print(f"\n## Throughput and latency ({args.rounds} interleaved rounds x {what} per cell, "
                  f"{args.warmup:g} s warm-up each, {args.chunks} chunks per stream)\n", flush=True)
            retry_until = time.monotonic() + args.retry_budget
            for rnd in range(args.rounds):
                for stream in modes:
                    for c in conc:
                        for target in order:
                            port, pid = ports[target]
                            sample = await measure_quietly(
                                port, pid, mock.pid, stream=stream, concurrency=c,
                                duration=None if args.requests else args.duration, requests=args.requests,
                                warmup=args.warmup, max_foreign=args.max_foreign, retries=args.retries,
                                retry_until=retry_until,
                            )
                            rows[(stream, c, target)].samples.append(sample)
                            print(f"  .. round {rnd + 1} {'stream' if stream else 'json'} c={c} {target}: "
                                  f"{sample.result.rps:,.0f} req/s, proxy CPU {fmt(sample.proxy_cpu_ms)} ms/req",
                                  file=sys.stderr, flush=True)
            print(throughput_table(list(rows.values())))
            if access_log != os.devnull:
                lines = count_lines(access_log)
                print(f"\naccess log: {lines:,} JSON lines written during the run")
        if not args.skip_memory:
            print("\n## Start-up and memory\n", flush=True)
            for p in procs[1:]:  # the throughput processes: only the mock stays
                p.stop()
            del procs[1:]
            times: list[float] = []
            noisy: list[float] = []
            while len(times) < args.startups and len(noisy) <= args.retries:
                took, foreign, started = await startup_time(workdir, config, access_log, mock)
                started.stop()
                (times if foreign <= args.max_foreign else noisy).append(took)
                await asyncio.sleep(0.5 if foreign <= args.max_foreign else 3.0)
            all_noisy = not times
            if all_noisy:
                times, noisy = noisy, []  # never quiet: report them anyway, flagged
            proc = start_gateway(workdir, config, access_log)  # a fresh one for the memory test
            procs.append(proc)
            print(f"start-up to first served request: median {statistics.median(times) * 1e3:.0f} ms, "
                  f"max {max(times) * 1e3:.0f} ms over {len(times)} starts "
                  f"({', '.join(f'{t * 1e3:.0f}' for t in times)} ms)"
                  + ("; ALL UNDER FOREIGN LOAD" if all_noisy else "")
                  + (f"; {len(noisy)} start(s) under foreign load discarded "
                     f"({', '.join(f'{t * 1e3:.0f}' for t in noisy)} ms)" if noisy else ""))
            print("\n| process | RSS idle MB | RSS with N open streams MB | streams started | RSS after close MB |")
            print("|---|---:|---:|---:|---:|")
            mem_targets = [("gateway", proc)]
            if "bare" in targets:
                bare_mem = start_bare(workdir, mock.port)
                procs.append(bare_mem)
                mem_targets.append(("bare", bare_mem))
            for name, p in mem_targets:
                idle, peak, ok, after = await memory(p, args.streams, timeout=30)
                print(f"| {name} | {idle:.1f} | {peak:.1f} (N={args.streams}) | {ok} | {after:.1f} |", flush=True)
    print("\nall processes stopped.")


def main() -> None:
    parser = argparse.ArgumentParser(description="relaygate benchmark (loopback only, bounded).")
    parser.add_argument("--targets", default="gateway,bare",
                        help="comma list of bare,gateway,gateway-aiohttp,gateway-ref "
                             "(direct is always measured as the baseline)")
    parser.add_argument("--ref", default=None,
                        help="also run this git ref's build (e.g. main, a commit) as gateway-ref, "
                             "from a temporary worktree")
    parser.add_argument("--mode", choices=("json", "stream", "both"), default="both")
    parser.add_argument("--concurrency", default="1,64", help="comma list, e.g. 1,64")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; cells report medians")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per cell and round")
    parser.add_argument("--requests", type=int, default=None, help="requests per cell instead of a duration")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per cell and round")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per mock stream")
    parser.add_argument("--streams", type=int, default=1000, help="open streams for the memory test")
    parser.add_argument("--startups", type=int, default=3, help="cold starts timed")
    parser.add_argument("--max-foreign", type=float, default=0.15,
                        help="cores other processes may use during a cell before it is measured again")
    parser.add_argument("--retries", type=int, default=4, help="re-measurements of a cell under foreign load")
    parser.add_argument("--retry-budget", type=float, default=60.0,
                        help="seconds the throughput phase may spend re-measuring disturbed cells, in all")
    parser.add_argument("--access-log", choices=("file", "devnull"), default="file")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    run_bench(main_async(parser.parse_args()))


def run_bench(main: Coroutine[Any, Any, None]) -> None:
    """Run a benchmark's main coroutine on uvloop, with room for thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))  # children inherit
    uvloop.run(main)


if __name__ == "__main__":
    main()
