"""The listening side: aiohttp's HTTP/1.1 server with the limits an exposed gateway needs.

aiohttp caps a header line and the number of headers, not their total, and has no time
limit for receiving headers; it keeps a connection open however many are open already.
`GuardedHandler` (aiohttp's `RequestHandler`, one per connection) adds, at the protocol
level and so before any handler or key check runs:

- `server.max_connections`: a connection beyond it gets a 503 and is closed at once, so
  idle or slow clients cannot exhaust the process's file descriptors;
- `server.max_header_size`: a request whose request line and headers exceed it gets 431;
- `server.header_timeout`: a connection that has not completed a request's headers in
  time gets 408 (a new connection is on the clock from the start, a kept-alive one from
  its next request's first byte);
- HTTP/1.0 requests with `Transfer-Encoding` are refused (RFC 9112 §6.1: faulty framing);
- malformed requests are answered with OpenAI-shaped JSON and logged as one short line,
  rate-limited, with no traceback and none of the request's bytes (which may hold a key).

The common case costs one Python frame per read and no timer: each connection has one
header clock, re-armed when it fires, and a request only notes when its head began.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from ..config.load import ServerSettings
from .app import STATE

log = logging.getLogger("relaygate.listener")


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response, written straight to the transport."""
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Throttled:
    """One log line per `every` seconds for a recurring event, with how many it stands for."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = -1e9
        self._count = 0

    def __call__(self, message: str, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.every:
            log.warning(message + " (%d since the last such line)", *args, self._count)
            self._last, self._count = now, 0


class Guard:
    """The limits and the live connection count shared by one server's handlers."""

    def __init__(self, settings: ServerSettings) -> None:
        self.max_connections = settings.max_connections
        self.max_header_size = settings.max_header_size
        self.header_timeout = settings.header_timeout
        self.open = 0
        self.refused = _Throttled()
        self.cut = _Throttled()
        self.malformed = _Throttled()
        self.busy = _raw_error(
            503, "Service Unavailable", "The gateway has too many open connections; retry shortly.",
            "too_many_connections",
        )  # fmt: skip
        self.too_large = _raw_error(
            431, "Request Header Fields Too Large",
            f"The request's headers exceed {self.max_header_size} bytes.", "request_headers_too_large",
        )  # fmt: skip
        self.too_slow = _raw_error(
            408, "Request Timeout", f"The request's headers did not arrive within {self.header_timeout:g} s.",
            "request_timeout",
        )  # fmt: skip


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the guard's limits (see the module docstring)."""

    __slots__ = ("_body", "_counted", "_guard", "_head_since", "_header_bytes", "_header_timer")

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False
        self._header_bytes = 0
        #: When the head being received began (loop time); None while no head is under way.
        self._head_since: float | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader = EMPTY_PAYLOAD  # the payload of the last request whose headers are in

    # -------------------------------------------------------------- connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            transport.write(guard.busy)  # type: ignore[attr-defined]  # a Transport: asyncio passes one
            transport.close()
            guard.refused("refused a connection: server.max_connections (%d) are open", guard.max_connections)
            return
        guard.open += 1
        self._counted = True
        super().connection_made(transport)
        # A new connection is on the clock from the start. One timer per connection,
        # re-armed when it fires: a request costs no timer, only a timestamp.
        self._head_since = self._loop.time()
        self._header_timer = self._loop.call_later(guard.header_timeout, self._check_head)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return  # refused in connection_made: nothing was started
        self._counted = False
        self._guard.open -= 1
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    # -------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close or self._upgraded or not self._body.is_eof():
            # A body in flight (its own limits apply in the handler) or a closing connection.
            super().data_received(data)
            return
        before = self._request_count
        super().data_received(data)
        if self._request_count == before:
            self._header_bytes += len(data)
            if self._header_bytes > self._guard.max_header_size:
                self._refuse(self._guard.too_large, "sent more than server.max_header_size of headers")
            elif self._head_since is None:
                self._head_since = self._loop.time()
            return
        self._header_bytes = 0
        self._head_since = None
        messages = self._messages
        for i in range(len(messages) - (self._request_count - before), len(messages)):
            message, payload = messages[i]
            if isinstance(message, _ErrInfo):
                continue
            if message.version < HttpVersion11 and message.chunked:
                exc = BadHttpMessage("Transfer-Encoding is not allowed in HTTP/1.0 requests")
                messages[i] = (_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)
            else:
                self._body = payload

    def _check_head(self) -> None:
        """The connection's header clock: refuse a head that took too long, else re-arm."""
        self._header_timer = None
        if self._close or self._force_close or self.transport is None:
            return
        timeout = self._guard.header_timeout
        since = self._head_since
        now = self._loop.time()
        if since is not None and self._body.is_eof():
            if now - since >= timeout:
                self._refuse(self._guard.too_slow, "did not send its headers within server.header_timeout")
                return
            wait = since + timeout - now
        else:
            wait = timeout
        self._header_timer = self._loop.call_later(wait, self._check_head)

    def _refuse(self, response: bytes, why: str) -> None:
        """Answer (when no response of ours is under way) and close the connection."""
        if self._current_request is None and not self._messages and self.transport is not None:
            self.transport.write(response)
        self._guard.cut("closed a connection that %s", why)
        self.force_close()

    # -------------------------------------------------------------- errors

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # A malformed request: its bytes may hold a client's key (`Bearer sk-…\r`), and a
        # traceback per bad request lets anyone fill the log.
        reason = _reason(exc)
        self._guard.malformed("malformed HTTP request from %s: %s", request.remote, reason)
        rid = "req_" + os.urandom(12).hex()
        body = {"error": {"message": f"Malformed HTTP request: {reason}.", "type": "invalid_request_error",
                          "param": None, "code": "bad_http_request"}}  # fmt: skip
        resp = web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers={"x-request-id": rid})  # fmt: skip
        resp.force_close()
        return resp


def _reason(exc: HttpProcessingError) -> str:
    """What was wrong, without the offending bytes (llhttp appends them after a blank line)."""
    text = (exc.message or "").partition("\n")[0].strip().rstrip(":")
    if not text or "'" in text or '"' in text or len(text) > 120:
        return type(exc).__name__
    return text


class GuardedServer(web.Server):
    """`web.Server` whose connections are `GuardedHandler`s sharing one `Guard`."""

    guard: Guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` serving through `GuardedServer`, with the config's `server.*` limits.

    The config is loaded by the app's start-up, which runs inside `_make_server`; the
    limits are read once, there, and hold for the life of the listener.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        settings = self.app[STATE].current.config.server
        server.__class__ = GuardedServer  # only __call__ differs: which protocol each connection gets
        assert isinstance(server, GuardedServer)
        server.guard = Guard(settings)
        server._kwargs.update(
            keepalive_timeout=settings.keepalive_timeout,
            # After an early answer (401 before the body), what is left of the body is
            # read and dropped for at most this long, so the client sees the answer.
            lingering_time=min(10.0, settings.body_timeout),
        )
        return server


# ---------------------------------------------------------------- serving (the CLI)


def settle_heap() -> None:
    """Move what start-up built (modules, config, plugins) out of the collector's sight.

    The cyclic collector's full passes scan every tracked object, and most of them are the
    ~100k that importing aiohttp, pydantic-free SDKs and the plugins left behind and that
    live as long as the process. Frozen, they are never scanned again; requests' own
    short-lived objects are collected as before.
    """
    gc.collect()
    gc.freeze()
    # A request allocates a few hundred objects: at the default threshold (700) the
    # young generation was collected every other request, each pass a fixed cost.
    gc.set_threshold(5000, 10, 10)



def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards the hard one; return the soft limit now in force.

    Each client connection holds a descriptor, and so does each upstream connection: a
    default soft limit of 1,024 would be exhausted long before `server.max_connections`.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else wanted


#: Descriptors kept for upstream connections, log files and the like beyond client connections.
FD_RESERVE = 256


def serve(app: web.Application, *, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None]) -> None:
    """Run the app until SIGINT or SIGTERM, as `web.run_app` does, on a `GatewayRunner`."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, host, port, reuse_port, on_ready))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


async def _serve(app: web.Application, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None]) -> None:
    runner = GatewayRunner(app, handle_signals=True, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        settings = app[STATE].current.config.server
        limit = raise_fd_limit(settings.max_connections + FD_RESERVE)
        if limit < settings.max_connections + FD_RESERVE:
            log.warning(
                "the open-files limit is %d: server.max_connections (%d) cannot all be served; "
                "raise the hard limit (ulimit -Hn) or lower server.max_connections",
                limit, settings.max_connections,
            )  # fmt: skip
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        settle_heap()
        on_ready()
        await asyncio.Event().wait()  # until a signal ends the loop
    finally:
        await runner.cleanup()
