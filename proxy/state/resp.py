"""A lean, pipelined Redis client for the hot path: one connection, replies in order.

Admission and settlement are one EVALSHA each per request. Through redis-py's asyncio
client a call costs ~0.2 ms of CPU (pool, locks, command objects, response callbacks),
more than the rest of the request; here one `asyncio.Protocol` carries every call of the
process: a call writes its command and awaits a future, replies are parsed as they
arrive and resolve the oldest waiter. Concurrent calls pipeline on the wire by
themselves, and a caller that is cancelled leaves the connection usable (its reply is
read and dropped). Everything else (get/set of stored objects) stays on redis-py.

URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS, system trust
store), `unix:///path/to/redis.sock[?db=N]`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("relaygate.state")
#: What `_Connection.send_now` calls with a reply: its value, or the error (a `RespError`
#: reply, or the `RespConnectionError` that ended the connection). What it raises is logged.
OnReply = Callable[[Any], None]


class RespError(Exception):
    """An error reply from Redis (`-ERR ...`, `-NOSCRIPT ...`)."""


class RespConnectionError(ConnectionError):
    """The connection failed, closed, or a reply took longer than the timeout."""


def encode(args: tuple[Any, ...] | list[Any], head: bytes = b"", head_count: int = 0) -> bytes:
    """A command in RESP: an array of bulk strings (`head`: the first `head_count` of them, encoded)."""
    out = [b"*%d\r\n" % (len(args) + head_count), head]
    for arg in args:
        kind = type(arg)
        data = arg.encode() if kind is str else arg if kind is bytes else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


_INCOMPLETE = object()


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply from `buf` at `pos`: (value, next position), or (_INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    after = end + 2
    if kind == 58:  # ':' integer
        return int(line), after
    if kind == 36:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return _INCOMPLETE, pos
        return bytes(buf[after : after + size]), after + size + 2
    if kind == 42:  # '*' array
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = _parse(buf, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    if kind == 43:  # '+' simple string
        return line.decode(), after
    if kind == 45:  # '-' error
        return RespError(line.decode(errors="replace")), after
    raise RespConnectionError(f"unexpected reply type {chr(kind)!r} from Redis")


class _Connection(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        #: (sent at, the caller's future or its callback): one per call, in the order sent.
        self.waiters: deque[tuple[float, asyncio.Future[Any] | OnReply]] = deque()
        self.closed = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf:  # the rest of a reply that came in parts
            buf += data
            src: bytes | bytearray = buf
        else:  # the common case: whole replies, read where they are
            src = data
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(src):
                value, nxt = _parse(src, pos)
                if value is _INCOMPLETE:
                    break
                pos = nxt
                if not waiters:
                    raise RespConnectionError("a reply nobody asked for")
                _, waiter = waiters.popleft()
                if not isinstance(waiter, asyncio.Future):
                    try:
                        waiter(value)
                    except Exception:
                        log.exception("a Redis reply's callback failed")
                elif not waiter.done():  # a cancelled caller's reply is read and dropped
                    if isinstance(value, RespError):
                        waiter.set_exception(value)
                    else:
                        waiter.set_result(value)
        except (RespConnectionError, ValueError) as exc:
            self.fail(RespConnectionError(str(exc)))
            return
        if src is buf:
            del buf[:pos]
        elif pos < len(data):
            buf += data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise RespConnectionError("connection to Redis is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.waiters.append((time.monotonic(), fut))
        out = self._out
        out.append(payload)
        if len(out) == 1:  # the calls of one loop iteration leave in one write
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check)
        return fut

    def send_now(self, payload: bytes, on_reply: OnReply) -> None:
        """Write `payload` at once (behind any call not yet written) and call `on_reply` with its
        reply: no future and no extra loop turn, for a caller that already batches its calls."""
        if self.closed or self.transport is None:
            raise RespConnectionError("connection to Redis is closed")
        self.waiters.append((time.monotonic(), on_reply))
        if self._out:
            self._out.append(payload)  # keep the order of the replies' waiters
        else:
            self.transport.write(payload)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check(self) -> None:
        """Fail the connection when its oldest call has waited too long (one timer, not one per call)."""
        self._watchdog = None
        if not self.waiters or self.closed:
            return
        waited = time.monotonic() - self.waiters[0][0]
        if waited >= self.timeout:
            self.fail(RespConnectionError(f"Redis did not answer within {self.timeout:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout - waited, self._check)

    def fail(self, exc: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not isinstance(waiter, asyncio.Future):
                try:
                    waiter(exc)
                except Exception:
                    log.exception("a Redis reply's callback failed")
            elif not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """Calls over one pipelined connection, opened on first use and again after a failure."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.timeout = timeout
        query = parse_qs(parts.query)
        if self.scheme == "unix":
            self.path: str | None = unquote(parts.path)
            self.db = int(query.get("db", ["0"])[0])
        else:
            self.path = None
            self.db = int(parts.path.strip("/") or query.get("db", ["0"])[0] or 0)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            coro = loop.create_unix_connection(lambda: _Connection(self.timeout), self.path)
        else:
            context = ssl.create_default_context() if self.scheme == "rediss" else None
            coro = loop.create_connection(lambda: _Connection(self.timeout), self.host, self.port, ssl=context)
        try:
            _, conn = await asyncio.wait_for(coro, self.timeout)
        except (OSError, TimeoutError) as exc:
            raise RespConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from exc
        hello = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            hello.append(conn.send(encode(auth)))
        if self.db:
            hello.append(conn.send(encode(("SELECT", self.db))))
        for fut in hello:
            await fut  # an error reply (bad password) raises RespError: the caller's on_error applies
        return conn

    async def connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:  # single flight: one connect however many calls wait
            self._connecting = asyncio.ensure_future(self._connect())
        fut = self._connecting
        try:
            conn = await asyncio.shield(fut)
        finally:
            if self._connecting is fut and fut.done():
                self._connecting = None
        self._conn = conn
        return conn

    def ready(self) -> _Connection | None:
        """The open connection, for a caller that sends without awaiting a connect."""
        conn = self._conn
        return conn if conn is not None and not conn.closed else None

    async def call(self, *args: Any) -> Any:
        """One command's reply; raises `RespError` (error reply) or `RespConnectionError`."""
        return await self.call_with(b"", 0, args)

    async def call_with(self, head: bytes, head_count: int, args: tuple[Any, ...] | list[Any]) -> Any:
        """`call`, where the command starts with `head_count` arguments encoded once in `head`."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self.connection()
        return await conn.send(encode(args, head, head_count))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.fail(RespConnectionError("closed"))
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
