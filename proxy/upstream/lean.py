"""A lean HTTP/1.1 keep-alive client for the forwarding hot path (`transport: lean`).

Why not `aiohttp.ClientSession`: on a loopback benchmark its request path (URL objects,
header multidicts, cookie filtering, tracing signals, a timer re-armed on every read)
costs more CPU than the rest of the gateway together, so a gateway built on it cannot
match a bare forwarder built on it. This client writes each request as one buffer,
parses the answer with llhttp (through `httptools`, the parser uvicorn uses) and keeps
one pool of connections per upstream origin.

What it does, and no more: keep-alive pooling with a connection limit and a bounded
wait for a free connection, `Content-Length`, chunked and close-delimited bodies, TLS
(the provider's context, SNI), Happy Eyeballs connects, egress proxies (`CONNECT`
tunnels; absolute-form requests for `http` origins), a connect timeout, a read timeout
measured while the caller waits, backpressure on streamed bodies, caps on the response
head (64 KiB, 128 headers, 16 interim answers) and on a whole body read at once, idle
connections checked before reuse and closed when they expire, and no connection reuse
after anything went wrong. It never follows redirects and never decompresses (the
`Upstream` seam asks for identity and decodes what comes anyway).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httptools
from yarl import URL

from .connect import basic_authorization, connect
from .proxies import proxy_for
from .transport import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_INTERIM,
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    HTTPClientError,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
    TLSFailed,
    TransportSettings,
)

__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionClosed",
    "HTTPClient",
    "HTTPClientError",
    "Pool",
    "PoolTimeout",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "ResponseTooLarge",
    "TLSFailed",
]

#: Methods that may be sent again on a fresh connection when a reused one turns out to
#: have been closed by the server before it answered (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})

_HIGH_WATER = 1 << 20  # buffered body bytes at which the socket stops being read
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKENS_SEEN: set[str] = set()
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_URL_CACHE_SIZE = 1024

_default_ssl: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """One verifying context for every pool (loading the trust store costs milliseconds)."""
    global _default_ssl
    if _default_ssl is None:
        _default_ssl = ssl.create_default_context()
        _default_ssl.set_alpn_protocols(["http/1.1"])
    return _default_ssl


class Response:
    """An upstream response: status and headers now, the body as it arrives.

    `headers` maps lower-cased names to values (repeated headers joined with ", ").
    The owner must end every response with `release()` (the body was read to the end:
    the connection goes back to the pool) or `close()` (anything else).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_done",
        "_eof_ends",
        "_error",
        "_got_bytes",
        "_interim",
        "_keep_alive",
        "_raw_headers",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._eof_ends = False
        self._got_bytes = False
        self._done = False
        self._interim = 0

    # ---------------------------------------------------------------- consumer side

    async def read(self) -> bytes:
        """The whole body, at most the pool's `max_body_size` bytes (else `ResponseTooLarge`).

        What has arrived is taken out of the buffer as it comes: the whole body is kept
        anyway, and a body over `_HIGH_WATER` would otherwise pause the socket for good.
        """
        cap = self._conn.pool.max_body_size
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise ResponseTooLarge(f"{self._conn.pool.origin} answered {length} bytes; the cap is {cap}")
        chunks = self._chunks
        parts: list[bytes] = []
        size = 0
        while True:
            if self._error is not None:
                raise self._error
            for chunk in chunks:
                size += len(chunk)
            parts.extend(chunks)
            chunks.clear()
            self._buffered = 0
            if size > cap:
                raise ResponseTooLarge(f"{self._conn.pool.origin} answered more than {cap} bytes")
            if self._complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            self._conn.resume()
            await self._wait()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in (coalesced when the reader fell behind)."""
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._conn.resume()
                yield data
            elif self._error is not None:
                raise self._error
            elif self._complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Done with a fully read response: its connection may serve the next request."""
        if self._done:
            return
        self._done = True
        if self._complete and self._keep_alive and self._error is None and not self._chunks:
            self._conn.pool._put(self._conn)
        else:
            self._conn.abort()

    def close(self) -> None:
        """Done early (error, cancel, client gone): the connection is not reused."""
        if not self._done:
            self._done = True
            self._conn.abort()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        conn = self._conn
        waiter = self._waiter = conn.loop.create_future()
        timer = conn.loop.call_later(conn.pool.read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._fail(ReadTimeout(f"no data from {self._conn.pool.origin} for {self._conn.pool.read_timeout:g} s"))
            self._conn.abort()

    # ---------------------------------------------------------------- producer side

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """Record why the response cannot be used; a complete one too (bytes after its end)."""
        if self._error is None:
            self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._error)


class _Connection(asyncio.Protocol):
    """One socket to the upstream; the llhttp parser calls the `on_*` methods back."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head_only = False
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.uses = 0
        self.head_bytes = 0  # bytes received while the head (interim answers included) was incomplete

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:  # bytes nobody asked for: the connection is not sane any more
            self.abort()
            return
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, HTTPClientError) as exc:
            cause = exc.__context__  # a callback's own error, wrapped by httptools
            error: HTTPClientError
            if isinstance(exc, HTTPClientError):
                error = exc
            elif isinstance(cause, HTTPClientError):
                error = cause
            elif resp._complete:
                error = ProtocolError(f"{self.pool.origin} sent bytes past the end of its response")
            elif isinstance(exc, httptools.HttpParserUpgrade):
                error = ProtocolError(f"{self.pool.origin} switched protocols (HTTP {self.parser.get_status_code()})")
            else:
                error = ProtocolError(f"invalid HTTP response from {self.pool.origin}: {exc}")
            resp._fail(error)
            self.abort()
            return
        if not resp.status:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEADER_BYTES:
                resp._fail(ResponseTooLarge(f"{self.pool.origin} sent a response head over {MAX_HEADER_BYTES} bytes"))
                self.abort()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool._lost(self)
        resp = self.response
        if resp is None or resp._complete:
            return
        if resp._eof_ends and resp.status and exc is None:
            resp._complete = True  # a body delimited by the connection closing (cleanly, not reset)
            resp._wake()
            return
        what = "while sending the response" if resp.status else "before answering"
        resp._fail(ConnectionClosed(f"{self.pool.origin} closed the connection {what}"))

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        resp = self.response
        if resp is not None and resp._complete:
            # A second answer to one request: stop parsing (data_received drops the
            # connection) so it neither overwrites this response nor desyncs the next.
            raise ProtocolError(f"{self.pool.origin} sent more than one response")

    def on_status(self, reason: bytes) -> None:
        if _BAD_REASON.search(reason):
            raise ProtocolError(f"{self.pool.origin} sent control characters in its status line")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted when the head is complete: what one read can hold bounds the list meanwhile,
        # and `data_received` cuts a head that spans reads at MAX_HEADER_BYTES.
        self.response._raw_headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        parser = self.parser
        status = parser.get_status_code()
        raw_headers = resp._raw_headers
        if len(raw_headers) > MAX_HEADERS:
            raise ResponseTooLarge(f"{self.pool.origin} sent more than {MAX_HEADERS} headers")
        if status < 200:  # 103 Early Hints and the like: the real answer follows
            resp._raw_headers = []
            resp._interim += 1
            if status == 101 or resp._interim > MAX_INTERIM:
                raise ProtocolError(f"{self.pool.origin} sent interim HTTP {status} answers without end")
            return
        resp.status = status
        resp._keep_alive = parser.should_keep_alive()
        headers = resp.headers
        framed = False
        size = 0
        for raw_name, raw_value in raw_headers:
            size += len(raw_name) + len(raw_value)
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").rstrip(" \t")  # OWS is not part of the value
            if name in ("content-length", "transfer-encoding"):
                framed = True
            if name in headers:
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
        resp._raw_headers = []
        if size > MAX_HEADER_BYTES:
            raise ResponseTooLarge(f"{self.pool.origin} sent a response head over {MAX_HEADER_BYTES} bytes")
        resp._eof_ends = not framed and status not in (204, 304)
        if self.head_only:  # a HEAD answer has no body whatever its headers say
            resp._complete = True
            resp._keep_alive = False
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        if resp._complete:
            return
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self.response
        assert resp is not None
        if resp._interim and not resp.status:
            return  # the end of an interim answer
        resp._complete = True
        resp._wake()

    # ---------------------------------------------------------------- helpers

    def usable(self, now: float) -> bool:
        """Whether an idle connection may carry the next request (httpcore's `has_expired`)."""
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since <= self.pool.idle_timeout
        )

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        # connection_lost follows from the loop; mark now so nobody reuses it meanwhile
        if not self.closed:
            self.closed = True
            self.pool._lost(self)


class Pool:
    """Keep-alive connections to one origin (`scheme://host[:port]`), at most `limit` open."""

    def __init__(
        self,
        origin: str | URL,
        settings: TransportSettings | None = None,
        **overrides: Any,
    ) -> None:
        url = origin if isinstance(origin, URL) else URL(origin)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) origin: {str(origin)!r}")
        s = settings or TransportSettings()
        if overrides:
            s = dataclasses.replace(s, **overrides)
        self.origin = str(url.origin())
        self.host: str = url.raw_host or url.host
        self.tls = url.scheme == "https"
        default_port = 443 if self.tls else 80
        self.port: int = url.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.limit = s.limit
        self.connect_timeout = s.connect_timeout
        self.read_timeout = s.read_timeout
        self.pool_timeout = s.pool_timeout
        self.idle_timeout = s.idle_timeout
        self.max_body_size = s.max_body_size
        self.ssl_context = (s.ssl_context or default_ssl_context()) if self.tls else None
        self.proxy = proxy_for(url, s.proxies, s.no_proxy)
        #: Extra head for every request (absolute form through an http proxy).
        self._target_prefix = ""
        self._proxy_auth: list[tuple[str, str]] = []
        if self.proxy is not None and not self.tls:
            self._target_prefix = f"http://{self.host_header}"
            auth = basic_authorization(self.proxy)
            if auth:
                self._proxy_auth = [("Proxy-Authorization", auth)]
        self._idle: deque[_Connection] = deque()
        self._open = 0  # connections alive or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> Response:
        """Send one request; returns once the response's status and headers are in.

        `target` is the path and query. `Host` and `Content-Length` are added here.
        Raises `HTTPClientError` (`ReadTimeout`, `ConnectTimeout`, `PoolTimeout` are also
        `TimeoutError`s), or `ValueError` for a request that cannot be framed.
        """
        if self._proxy_auth:
            headers = [*headers, *self._proxy_auth]
        head = _head(method, self._target_prefix + target, self.host_header, headers, body)
        small = body is None or len(body) <= 65536
        payload = (head + body if body else head) if small else b""
        while True:
            conn = await self._acquire()
            reused = conn.uses > 0
            resp = Response(conn)
            conn.response = resp
            conn.head_only = method == "HEAD"
            conn.uses += 1
            conn.head_bytes = 0
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                conn.abort()
                if reused:
                    continue  # closed by the server while idle; nothing was sent
                raise ConnectionClosed(f"{self.origin} closed the connection at once")
            if small:
                transport.write(payload)
            else:
                transport.writelines((head, body))  # type: ignore[arg-type]
            try:
                while not resp.status:
                    await resp._wait()
            except ConnectionClosed:
                resp.close()
                if reused and not resp._got_bytes and method in IDEMPOTENT:
                    continue  # the server had closed the idle connection: try a fresh one
                raise
            except BaseException:
                resp.close()
                raise
            return resp

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close idle connections now; busy ones close when their response ends."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop().abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed(f"the pool for {self.origin} is closed"))

    # ---------------------------------------------------------------- pool internals

    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            if self._closed:
                raise ConnectFailed(f"the pool for {self.origin} is closed")
            idle = self._idle
            now = loop.time()
            while idle:
                conn = idle.pop()
                if conn.usable(now):
                    return conn
                conn.abort()
            if self._open < self.limit:
                return await self._connect(loop)
            if deadline is None:
                deadline = now + self.pool_timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise PoolTimeout(
                    f"no connection to {self.origin} came free within {self.pool_timeout:g} s "
                    f"({self.limit} in use)"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, but leaving (cancelled): the free slot goes to the next
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        self._open += 1
        conn = _Connection(self, loop)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await connect(
                    loop, lambda: conn, host=self.host, port=self.port, ssl_context=self.ssl_context, proxy=self.proxy
                )
        except BaseException as exc:
            # Counted off here, so the `connection_lost` of a transport that was made and
            # then closed (cancelled or timed out just after `connection_made`) must not be.
            conn.closed = True
            self._open -= 1
            self._wake_one()
            if conn.transport is not None:
                conn.transport.abort()
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(f"connecting to {self.origin} took over {self.connect_timeout:g} s") from exc
            if isinstance(exc, OSError):
                raise ConnectFailed(f"cannot connect to {self.origin}: {exc.__class__.__name__}") from exc
            raise
        return conn

    def _put(self, conn: _Connection) -> None:
        conn.response = None
        if conn.closed or self._closed:
            conn.abort()
            return
        conn.resume()  # a large body may have paused it: the next response must be read
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)
        # Drop connections that idled too long, oldest first, while we are here.
        idle = self._idle
        while idle and (idle[0].closed or conn.idle_since - idle[0].idle_since > self.idle_timeout):
            idle.popleft().abort()
        if self._sweep is None:
            self._sweep = conn.loop.call_later(self.idle_timeout + 0.05, self._sweep_idle)
        self._wake_one()

    def _sweep_idle(self) -> None:
        """Close idle connections that expired, even when no request comes to notice."""
        self._sweep = None
        idle = self._idle
        if not idle:
            return
        now = idle[-1].loop.time()
        while idle and (idle[0].closed or now - idle[0].idle_since > self.idle_timeout):
            idle.popleft().abort()
        if idle and not self._closed:
            wait = max(0.05, idle[0].idle_since + self.idle_timeout - now + 0.05)
            self._sweep = idle[0].loop.call_later(wait, self._sweep_idle)

    def _lost(self, conn: _Connection) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class HTTPClient:
    """One `Pool` per origin, so a provider whose URLs span hosts still pools per upstream."""

    def __init__(self, settings: TransportSettings | None = None, **overrides: Any) -> None:
        self.settings = settings or TransportSettings()
        self._overrides = overrides
        self._pools: dict[str, Pool] = {}
        #: url -> (pool, request target, extra headers): a provider sends to few URLs.
        self._urls: dict[str, tuple[Pool, str, tuple[tuple[str, str], ...]]] = {}

    def _route(self, url: str) -> tuple[Pool, str, tuple[tuple[str, str], ...]]:
        parsed = URL(url, encoded=True)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        origin = str(parsed.origin())
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Pool(parsed.origin(), self.settings, **self._overrides)
        extra: tuple[tuple[str, str], ...] = ()
        if parsed.user is not None:  # userinfo: Basic credentials, as aiohttp sends them
            auth = basic_authorization(parsed)
            assert auth is not None
            extra = (("Authorization", auth),)
        target = parsed.raw_path_qs or "/"
        if len(self._urls) >= _URL_CACHE_SIZE:
            self._urls.clear()
        route = self._urls[url] = (pool, target, extra)
        return route

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> Response:
        route = self._urls.get(url) or self._route(url)
        pool, target, extra = route
        if extra:
            headers = [*extra, *headers]
        return await pool.request(method, target, headers, body)

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._urls.clear()


def _head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body: bytes | None) -> bytes:
    if method not in _TOKENS_SEEN and not _TOKEN.fullmatch(method):
        raise ValueError("the request method is not a token")
    if " " in target or _BAD_VALUE.search(target):
        raise ValueError("the request target holds whitespace or control characters")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        if name not in _TOKENS_SEEN:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a token (or holds a line break)")
            if len(_TOKENS_SEEN) < 1024:  # a provider sends few distinct names: check each once
                _TOKENS_SEEN.add(name)
        if _BAD_VALUE.search(value):
            raise ValueError(f"header {name!r} holds a line break or a control character")
        lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    # aiohttp's server decodes header bytes as UTF-8 with surrogateescape: this restores them.
    return "".join(lines).encode("utf-8", "surrogateescape")
