"""A fast OpenAI-compatible mock upstream for the benchmark (raw asyncio protocol + uvloop).

`POST /v1/chat/completions` answers at once with a fixed ~1 KB completion, or, when the
body says `"stream":true`, with an SSE stream of `--chunks` content chunks, one usage
chunk and `data: [DONE]` (chunked transfer encoding, one HTTP chunk per event, the loop
yielding between events so they leave as separate writes). A model name containing
`bench-slow` streams one event per `--slow-interval` seconds for up to `--slow-seconds`
(the 1,000-open-streams memory test). `GET /v1/models` lists one model. Anything else: 404.

The parser trusts its client (keep-alive HTTP/1.1, Content-Length bodies): it is a
benchmark fixture, not a server. A raw protocol costs ~4x less CPU per request than an
aiohttp handler, so the mock stays far from being the bottleneck.

    python bench/mock_upstream.py --port 9000 [--chunks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import cast

import orjson
import uvloop

_CONTENT = (
    "Benchmarks measure what they measure. This completion is a fixed text of roughly one "
    "kilobyte so that the gateway relays a realistic body without the mock spending any time "
    "producing it. " * 4
).strip()

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _CONTENT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 250, "completion_tokens": 200, "total_tokens": 450},
    }
)
MODELS = orjson.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model", "owned_by": "bench"}]})
NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error"}}'


def _head(status: str, content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{framing}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()


def _event(payload: object) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _delta(i: int, n: int) -> dict[str, object]:
    choice: dict[str, object] = {
        "index": 0,
        "delta": {"content": f" token{i}"} if i else {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": "stop" if i == n - 1 else None,
    }
    return {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": [choice],
    }


def stream_events(chunks: int) -> list[bytes]:
    """The chunked-encoded SSE events of one stream, then the terminating zero chunk."""
    usage = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [],
        "usage": {"prompt_tokens": 250, "completion_tokens": chunks, "total_tokens": 250 + chunks},
    }
    done = b"data: [DONE]\n\n"
    return [
        *(_event(_delta(i, chunks)) for i in range(chunks)),
        _event(usage),
        b"%x\r\n%s\r\n" % (len(done), done),
        b"0\r\n\r\n",
    ]


class MockProtocol(asyncio.Protocol):
    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.queue: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            self.queue.append((head.split(b" ", 2)[1], body))
            if self.task is None:
                self._next()

    def _next(self) -> None:
        """Answer queued requests in order; a stream holds the connection until done."""
        while self.queue and self.transport is not None:
            path, body = self.queue.pop(0)
            if path.endswith(b"/chat/completions") and (b'"stream":true' in body or b'"stream": true' in body):
                slow = b"bench-slow" in body
                self.task = asyncio.get_running_loop().create_task(self._stream(slow))
                self.task.add_done_callback(self._stream_done)
                return
            if path.endswith(b"/chat/completions"):
                self.transport.write(self.server.completion_response)
            elif path.endswith(b"/models"):
                self.transport.write(_head("200 OK", "application/json", len(MODELS)) + MODELS)
            else:
                self.transport.write(_head("404 Not Found", "application/json", len(NOT_FOUND)) + NOT_FOUND)

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled():
            self._next()

    async def _stream(self, slow: bool) -> None:
        events = self.server.events
        transport = self.transport
        assert transport is not None
        transport.write(self.server.stream_head)
        if slow:
            deadline = time.monotonic() + self.server.slow_seconds
            transport.write(events[0])
            i = 1
            while time.monotonic() < deadline:
                await asyncio.sleep(self.server.slow_interval)
                if self.transport is None:
                    return
                transport.write(_event(_delta(i, 1 << 30)))
                i += 1
            transport.write(b"".join(events[-3:]))
            return
        for ev in events:
            if self.transport is None:
                return
            transport.write(ev)
            await asyncio.sleep(0)  # let each event leave as its own write


class MockServer:
    def __init__(self, chunks: int, slow_interval: float, slow_seconds: float) -> None:
        self.completion_response = _head("200 OK", "application/json", len(COMPLETION)) + COMPLETION
        self.stream_head = _head("200 OK", "text/event-stream; charset=utf-8", None)
        self.events = stream_events(chunks)
        self.slow_interval = slow_interval
        self.slow_seconds = slow_seconds


async def serve(host: str, port: int, server: MockServer) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: MockProtocol(server), host, port, backlog=4096, reuse_address=True)
    print(f"mock upstream on http://{host}:{port}", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream (plus usage and [DONE])")
    parser.add_argument("--slow-interval", type=float, default=1.0, help="seconds between events of a slow stream")
    parser.add_argument("--slow-seconds", type=float, default=60.0, help="how long a slow stream lasts")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the mock serves loopback only")
    uvloop.run(serve(args.host, args.port, MockServer(args.chunks, args.slow_interval, args.slow_seconds)))


if __name__ == "__main__":
    main()
