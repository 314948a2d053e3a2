"""CPU cost of the Bedrock Converse path, beside OpenAI pass-through.

    python bench/bedrock.py                # micro + end to end, ~1 minute
    python bench/bedrock.py --micro-only

1. Micro (in process): per request, OpenAI body → Converse body → orjson → SigV4 signature
   → Converse answer → OpenAI body; per streamed event, frame decode → chunk bytes. Also
   the stock aiobotocore request path for comparison (what the plugin avoids).
2. End to end (loopback processes): a relaygate gateway in front of bench/mock_upstream.py
   (OpenAI) and of a raw-protocol mock Bedrock (below, no SigV4 check), load from
   bench/loadgen.py at one connection; gateway CPU per request from /proc.

Nothing here talks to a non-loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from run import chat_body, chat_request

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH = HERE
HOST = "127.0.0.1"
CLIENT_KEY = "sk-client-bench-0123456789"
MODEL = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
TEXT = ("Benchmarks measure what they measure. This completion is a fixed text of roughly one kilobyte so that "
        "the gateway relays a realistic body without the mock spending any time producing it. " * 4).strip()


CONVERSE_ANSWER = orjson.dumps({
    "output": {"message": {"role": "assistant", "content": [{"text": TEXT}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 250, "outputTokens": 200, "totalTokens": 450},
    "metrics": {"latencyMs": 100},
})


def stream_frames(chunks: int) -> list[bytes]:
    from relaygate_bedrock.eventstream import encode_frame

    def ev(kind: str, payload: dict[str, Any]) -> bytes:
        headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
        return encode_frame(headers, orjson.dumps({**payload, "p": "abcdefgh"}))

    return [
        ev("messageStart", {"role": "assistant"}),
        *(ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": f" token{i}"}}) for i in range(chunks)),
        ev("contentBlockStop", {"contentBlockIndex": 0}),
        ev("messageStop", {"stopReason": "end_turn"}),
        ev("metadata", {"usage": {"inputTokens": 250, "outputTokens": chunks, "totalTokens": 250 + chunks},
                        "metrics": {"latencyMs": 100}}),
    ]


# ---------------------------------------------------------------- micro


def _cpu_per_call(fn: Any, n: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


async def micro(n: int) -> None:
    from relaygate_bedrock.auth import AwsAuth, AwsSettings, model_path
    from relaygate_bedrock.eventstream import EventStreamDecoder
    from relaygate_bedrock.request_map import map_chat
    from relaygate_bedrock.response_map import chat_completion
    from relaygate_bedrock.stream_map import ChatStreamMapper

    auth = AwsAuth(AwsSettings(region="us-west-2", access_key_id="AKIDBENCH", secret_access_key="bench-secret"))
    await auth.start()
    body = chat_request(False, "claude")
    raw = orjson.dumps(body)
    url = "https://bedrock-runtime.us-west-2.amazonaws.com" + model_path(MODEL, "converse")
    loop = asyncio.get_running_loop()

    def request_side() -> None:
        payload = orjson.dumps(map_chat(orjson.loads(raw), MODEL).body)
        coro = auth.sign(url, payload, {"Content-Type": "application/json", "Accept": "application/json"})
        with contextlib.suppress(StopIteration):
            coro.send(None)  # frozen credentials are at hand: the coroutine finishes without suspending

    def translate_only() -> None:
        orjson.dumps(map_chat(orjson.loads(raw), MODEL).body)

    def response_side() -> None:
        chat_completion(orjson.loads(CONVERSE_ANSWER), MODEL)

    frames = stream_frames(200)
    blob = b"".join(frames)

    def stream_side() -> None:
        decoder = EventStreamDecoder()
        mapper = ChatStreamMapper(MODEL, False)
        for frame in frames:
            for headers, payload in decoder.feed(frame):
                mapper.event(headers[":event-type"], payload)  # type: ignore[arg-type]

    def stream_split() -> None:  # network reads that cut frames anywhere
        decoder = EventStreamDecoder()
        mapper = ChatStreamMapper(MODEL, False)
        for i in range(0, len(blob), 1000):
            for headers, payload in decoder.feed(blob[i : i + 1000]):
                mapper.event(headers[":event-type"], payload)  # type: ignore[arg-type]

    def botocore_decode() -> None:
        from botocore.eventstream import EventStreamBuffer

        buf = EventStreamBuffer()
        for frame in frames:
            buf.add_data(frame)
            for _ in buf:
                pass

    print("## Micro (CPU per call, this process)\n")
    print("| step | µs |\n|---|---:|")
    print(f"| OpenAI body → Converse body → orjson | {_cpu_per_call(translate_only, n) * 1e6:.1f} |")
    print(f"| … + SigV4 signature (botocore SigV4Auth) | {_cpu_per_call(request_side, n) * 1e6:.1f} |")
    print(f"| Converse answer → OpenAI body | {_cpu_per_call(response_side, n) * 1e6:.1f} |")
    per_event = _cpu_per_call(stream_side, max(20, n // 50)) / len(frames)
    print(f"| streamed event: decode frame + map + SSE bytes | {per_event * 1e6:.2f} |")
    per_event = _cpu_per_call(stream_split, max(20, n // 50)) / len(frames)
    print(f"| streamed event, frames split across 1 KB reads | {per_event * 1e6:.2f} |")
    per_event = _cpu_per_call(botocore_decode, max(20, n // 50)) / len(frames)
    print(f"| (botocore EventStreamBuffer decode only, for comparison) | {per_event * 1e6:.2f} |")
    await _stock_client(n // 10, loop)


async def _stock_client(n: int, loop: asyncio.AbstractEventLoop) -> None:
    """What one aiobotocore converse() costs on the client side (answered by a local stub)."""
    from aiobotocore.session import AioSession
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=CONVERSE_ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    session = AioSession()
    session.set_credentials("AKIDBENCH", "bench-secret")
    body = chat_request(False, "claude")
    try:
        async with session.create_client("bedrock-runtime", region_name="us-west-2",
                                         endpoint_url=f"http://{HOST}:{port}") as client:
            messages = [{"role": "user", "content": [{"text": body["messages"][1]["content"]}]}]
            await client.converse(modelId=MODEL, messages=messages)
            t0 = time.process_time()
            for _ in range(n):
                await client.converse(modelId=MODEL, messages=messages, system=[{"text": "x"}],
                                      inferenceConfig={"maxTokens": 256, "temperature": 0.2})
            total = (time.process_time() - t0) / n
    finally:
        await runner.cleanup()
    print(f"| (stock aiobotocore converse(), client + stub server, for comparison) | {total * 1e6:.0f} |\n")


# ---------------------------------------------------------------- mock Bedrock (raw protocol)


class MockBedrock(asyncio.Protocol):
    """Keep-alive HTTP/1.1, Content-Length requests; converse → JSON, converse-stream → frames."""

    frames: list[bytes] = []

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            path = head.split(" ", 2)[1]
            self.buf = self.buf[end + 4 + length :]
            if path.endswith("/converse-stream"):
                task = asyncio.ensure_future(self._stream())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                     b"\r\n%s" % (len(CONVERSE_ANSWER), CONVERSE_ANSWER))

    async def _stream(self) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        for frame in self.frames:
            self.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            await asyncio.sleep(0)
        self.transport.write(b"0\r\n\r\n")


def run_mock(port: int, chunks: int) -> None:
    import uvloop

    MockBedrock.frames = stream_frames(chunks)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(MockBedrock, HOST, port)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve())


# ---------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


Results = dict[str, list[tuple[float, float, float]]]


async def measure(gw: subprocess.Popen[bytes], port: int, cells: list[tuple[str, bytes]], duration: float,
                  rounds: int, work: Path) -> Results:  # fmt: skip
    """(gateway CPU s/req, req/s, p50 s) per named raw request and round, at one connection."""
    from loadgen import run_load

    results: Results = {name: [] for name, _ in cells}
    for name, raw in cells:  # warm up
        res = await run_load(HOST, port, raw, concurrency=1, duration=None, requests=300)
        if res.errors:
            raise RuntimeError(f"{name}: {res.errors} errors (see {work})")
    for _ in range(rounds):  # interleaved, so a burst of foreign load hits every cell alike
        for name, raw in cells:
            cpu0 = _cpu(gw.pid)
            res = await run_load(HOST, port, raw, concurrency=1, duration=duration, requests=None)
            cpu = (_cpu(gw.pid) - cpu0) / max(res.count, 1)
            lat = statistics.median(res.latencies) if res.latencies else 0.0
            results[name].append((cpu, res.rps, lat))
    return results


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def print_results(results: Results) -> dict[str, float]:
    """The table of (CPU s/req, req/s, p50 s) rounds per path; the median CPU per path."""
    print("| path | CPU ms/req | req/s | p50 latency ms |\n|---|---:|---:|---:|")
    medians = {}
    for name, rows in results.items():
        medians[name] = statistics.median(r[0] for r in rows)
        print(f"| {name} | {medians[name] * 1e3:.3f} | {statistics.median(r[1] for r in rows):.0f} | "
              f"{statistics.median(r[2] for r in rows) * 1e3:.3f} |")
    print()
    return medians


async def end_to_end(duration: float, chunks: int, rounds: int) -> None:
    sys.path.insert(0, str(BENCH))
    from loadgen import build_request

    work = Path(tempfile.mkdtemp(prefix="bench-bedrock-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], port: int, name: str) -> subprocess.Popen[bytes]:
        with open(work / f"{name}.out", "wb") as out, open(work / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        procs.append(proc)
        _wait(port, proc)
        return proc

    try:
        openai_port, bedrock_port, gw_port = _free_port(), _free_port(), _free_port()
        spawn([sys.executable, str(BENCH / "mock_upstream.py"), "--port", str(openai_port), "--chunks", str(chunks)],
              openai_port, "mock-openai")
        spawn([sys.executable, __file__, "--mock-port", str(bedrock_port), "--chunks", str(chunks)],
              bedrock_port, "mock-bedrock")
        config = work / "gateway.yaml"
        config.write_text(
            "server: {host: 127.0.0.1, log_level: INFO}\n"
            f"clients:\n  keys:\n    - {{name: bench, key: {CLIENT_KEY}}}\n"
            "providers:\n"
            f"  up: {{type: openai, base_url: 'http://{HOST}:{openai_port}/v1', api_key: sk-bench}}\n"
            f"  bedrock: {{type: bedrock, region: us-west-2, endpoint_url: 'http://{HOST}:{bedrock_port}',\n"
            "            access_key_id: AKIDBENCH, secret_access_key: bench-secret-not-real}\n"
            "routes:\n"
            f"  - {{model: claude, to: {{provider: bedrock, model: '{MODEL}'}}}}\n"
            '  - {model: "*", to: up}\n'
        )
        gw = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(gw_port)],
                   gw_port, "gateway")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
        cells = [("OpenAI pass-through", "bench-model", False), ("Bedrock Converse", "claude", False),
                 ("OpenAI pass-through stream", "bench-model", True), ("Bedrock ConverseStream", "claude", True)]
        requests = [(name, build_request(HOST, gw_port, "/v1/chat/completions", chat_body(stream, model), headers))
                    for name, model, stream in cells]  # fmt: skip
        results = await measure(gw, gw_port, requests, duration, rounds, work)
        print(f"## End to end (gateway process CPU per request, 1 connection, {chunks} chunks per stream, "
              f"median of {rounds} rounds of {duration:g} s)\n")
        medians = print_results(results)
        print(f"Converse / pass-through CPU: {medians['Bedrock Converse'] / medians['OpenAI pass-through']:.2f}x; "
              f"stream: {medians['Bedrock ConverseStream'] / medians['OpenAI pass-through stream']:.2f}x")
        extra = (medians["Bedrock ConverseStream"] - medians["Bedrock Converse"]) / (chunks + 4)
        print(f"Bedrock stream cost per event beyond a non-stream request: {extra * 1e6:.1f} µs")
    finally:
        stop_all(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--n", type=int, default=5000, help="micro iterations")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per end-to-end cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=20, help="content events per stream")
    parser.add_argument("--mock-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mock_port:
        run_mock(args.mock_port, args.chunks)
        return
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    asyncio.run(micro(args.n))
    if not args.micro_only:
        asyncio.run(end_to_end(args.duration, args.chunks, args.rounds))


if __name__ == "__main__":
    main()
