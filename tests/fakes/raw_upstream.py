"""A hostile upstream: a loopback TCP server that answers with exactly the bytes a test wants.

Runs its own event loop in a thread (like `proxy.testing.FakeServer`), so the gateway
under test and the synchronous OpenAI SDK can both talk to it. Independent of `proxy`.

    async def handler(up, reader, writer):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

    with RawUpstream(handler) as up: ...   # up.url, up.requests, up.connections
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    def __init__(self, handler: Handler, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.host = host
        self.ssl_context = ssl_context
        self.port = 0
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="RawUpstream")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.state: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self._writers.add(writer)
        try:
            await self.handler(self, reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.transport.abort()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request's head and Content-Length body; b"" once the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        body = await reader.readexactly(int(length[1])) if length else b""
        self.requests.append(head + body)
        return head + body


def answer(*responses: bytes) -> Handler:
    """Answer the n-th request with `responses[n]` (the last repeats), keeping the connection."""

    async def handler(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await up.read_request(reader):
            writer.write(responses[min(len(up.requests), len(responses)) - 1])
            await writer.drain()

    return handler


def json_response(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
        % (status.encode(), len(body), extra, body)
    )


CHAT_BODY = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi","refusal":null},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
)
