"""`proxy.upstream.lean` against raw loopback servers that speak exact bytes.

Every test runs twice: on asyncio's own loop and on uvloop (what `serve` runs on), since
the client leans on transport behaviour (pause_reading, abort, connection_lost order).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any

import pytest
import uvloop
from fakes import certs
from fakes.certs import self_signed

from proxy.upstream import lean
from proxy.upstream.lean import (
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    HTTPClient,
    Pool,
    ProtocolError,
    ReadTimeout,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def both_loops(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test once per loop in `LOOPS`, each on a fresh loop that is closed after."""
    signature = inspect.signature(test)

    @pytest.mark.parametrize("loop_name", list(LOOPS))
    def run(loop_name: str, **fixtures: Any) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            runner.run(asyncio.wait_for(test(**fixtures), 10))  # a hang fails fast

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("loop_name", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                    *signature.parameters.values()]
    )
    run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
    return run


async def eventually(check: Callable[[], bool], timeout: float = 1.0) -> None:
    """Wait until `check()` holds (the other end of a socket acts on its own schedule)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 (a condition on another party's state)
            await asyncio.sleep(0.005)


Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running `handler(server, reader, writer)` for each connection.

    It counts connections (accepted, open now, most open at once), keeps every request's
    raw bytes in `requests` and counts in `eofs` the connections the client closed.
    """

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.host = host
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.eofs = 0
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.origin = f"{scheme}://{host}:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self.errors and exc_info[0] is None:
            raise self.errors[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer)
        except asyncio.CancelledError:
            pass  # cancelled by __aexit__ (Python 3.11's start_server logs a cancelled handler)
        except Exception as exc:  # the loop would only log it: hand it to the test instead
            self.errors.append(exc)
        finally:
            self.open -= 1
            writer.transport.abort()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request's raw bytes (head and Content-Length body), b"" once the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            body = await reader.readexactly(int(length[1])) if length else b""
        except (asyncio.IncompleteReadError, ConnectionResetError):
            self.eofs += 1
            return b""
        self.requests.append(head + body)
        return head + body


def answer(*responses: bytes) -> Handler:
    """Answer the n-th request the server sees with `responses[n]` (the last one repeats)."""

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            writer.write(responses[min(len(srv.requests), len(responses)) - 1])
            await writer.drain()

    return handler


async def get(pool: Pool, method: str = "GET", body: bytes | None = None) -> bytes:
    """One request whose body is read whole and whose connection is released."""
    resp = await pool.request(method, "/", [], body)
    data = await resp.read()
    resp.release()
    return data


# ------------------------------------------------------------------------ bodies


@both_loops
async def test_content_length_body_and_exact_request_bytes() -> None:
    async with (
        Server(answer(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Id: 7\r\n\r\nhello")) as srv,
        Pool(srv.origin) as pool,
    ):
        headers = [("Authorization", "Bearer k"), ("Content-Type", "application/json")]
        resp = await pool.request("POST", "/v1/chat?x=1", headers, b'{"a":1}')
        assert (resp.status, resp.headers) == (201, {"content-length": "5", "x-id": "7"})
        assert await resp.read() == b"hello"
        resp.release()
        resp = await pool.request("GET", "/v1/models", [("Accept", "*/*")])
        assert await resp.read() == b"hello"
        resp.release()
    assert srv.requests == [
        b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer k\r\n"
        b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}' % srv.port,
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: */*\r\n\r\n" % srv.port,
    ]


@both_loops
async def test_empty_and_large_request_bodies_are_sent_whole() -> None:
    big = random.Random(1).randbytes(300_000)  # over 64 KiB: written as head + body
    async with Server(answer(OK)) as srv, Pool(srv.origin) as pool:
        assert await get(pool, "POST", b"") == b"ok"
        assert await get(pool, "PUT", big) == b"ok"
    assert srv.requests[0].endswith(b"\r\nContent-Length: 0\r\n\r\n")
    assert srv.requests[1] == b"PUT / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 300000\r\n\r\n" % srv.port + big
    assert srv.connections == 1


@pytest.mark.parametrize("how", ["read", "iter_chunks"])
@both_loops
async def test_chunked_body(how: str) -> None:
    pieces = [b"hello ", b"chunked ", b"world"]
    first_piece_seen = asyncio.Event()

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                if how == "iter_chunks" and len(srv.requests) == 1:
                    await first_piece_seen.wait()  # one piece per read: the client sees them apart
                    first_piece_seen.clear()
            writer.write(b"0\r\nX-Trailer: t\r\n\r\n")

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        assert resp.headers == {"transfer-encoding": "chunked"}
        if how == "read":
            assert await resp.read() == b"".join(pieces)
        else:
            got = []
            async for chunk in resp.iter_chunks():
                got.append(chunk)
                first_piece_seen.set()
            assert got == pieces
        resp.release()
        assert await get(pool) == b"".join(pieces)  # trailers consumed: the connection is sane
    assert srv.connections == 1


@pytest.mark.parametrize("how", ["read", "iter_chunks"])
@both_loops
async def test_close_delimited_body(how: str) -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"world")
        writer.close()
        await writer.wait_closed()

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        assert resp.status == 200
        if how == "read":
            assert await resp.read() == b"hello world"
        else:
            assert b"".join([chunk async for chunk in resp.iter_chunks()]) == b"hello world"
        resp.release()
        assert await get(pool) == b"hello world"  # a fresh connection: the old one is gone
    assert srv.connections == 2


@both_loops
async def test_204_without_length_has_no_body_and_keeps_the_connection() -> None:
    async with Server(answer(b"HTTP/1.1 204 No Content\r\n\r\n", OK)) as srv, Pool(srv.origin) as pool:
        resp = await asyncio.wait_for(pool.request("DELETE", "/x", []), 0.5)
        assert resp.status == 204
        assert await asyncio.wait_for(resp.read(), 0.5) == b""
        resp.release()
        assert await get(pool) == b"ok"
    assert srv.connections == 1


@both_loops
async def test_head_response_with_content_length_completes() -> None:
    async with (
        Server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", OK)) as srv,
        Pool(srv.origin, read_timeout=0.5) as pool,
    ):
        resp = await pool.request("HEAD", "/file", [])
        assert (resp.status, resp.headers["content-length"]) == (200, "1234")
        assert await asyncio.wait_for(resp.read(), 0.2) == b""
        resp.release()
        assert await get(pool) == b"ok"
    assert srv.requests[0].startswith(b"HEAD /file HTTP/1.1\r\n")


@both_loops
async def test_early_hints_are_skipped() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Real: 1\r\n\r\nbody")

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        for _ in range(2):
            resp = await pool.request("GET", "/", [])
            assert (resp.status, resp.headers) == (200, {"content-length": "4", "x-real": "1"})
            assert await resp.read() == b"body"
            resp.release()
    assert srv.connections == 1


@both_loops
async def test_headers_are_lower_cased_and_repeats_joined() -> None:
    response = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Thing: a\r\nContent-Type: text/plain\r\n"
                b"x-thing: b\r\nSet-Cookie: s=1\r\nSET-COOKIE: t=2\r\n\r\nok")
    async with Server(answer(response)) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        assert resp.headers == {
            "content-length": "2", "x-thing": "a, b", "content-type": "text/plain", "set-cookie": "s=1, t=2"
        }
        assert await resp.read() == b"ok"
        resp.release()


# ------------------------------------------------------------------------ keep-alive and the pool


@both_loops
async def test_keep_alive_reuses_one_connection() -> None:
    async with Server(answer(OK)) as srv:
        pool = Pool(srv.origin)
        try:
            assert [await get(pool), await get(pool), await get(pool, "POST", b"x")] == [b"ok"] * 3
        finally:
            await pool.close()
        await eventually(lambda: srv.eofs == 1)  # close() closed the idle connection
    assert (srv.connections, len(srv.requests)) == (1, 3)


@both_loops
async def test_connection_close_response_is_not_reused() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await srv.read_request(reader)  # the server does not close: the client must

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        assert await get(pool) == b"ok"
        await eventually(lambda: srv.eofs == 1)  # released, yet closed by the client
        assert await get(pool) == b"ok"
    assert (srv.connections, len(srv.requests)) == (2, 2)


@pytest.mark.parametrize("method", ["GET", "POST"])
@both_loops
async def test_idle_connection_closed_by_the_server_is_replaced(method: str) -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(OK)
        if srv.connections == 1:
            writer.close()  # after the answer: the client holds an idle, closed connection
            await writer.wait_closed()
        else:
            await srv.read_request(reader)

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        assert await get(pool) == b"ok"
        await asyncio.sleep(0.05)  # the loop has seen the FIN
        assert await get(pool, method, b"2" if method == "POST" else None) == b"ok"
    assert srv.connections == 2
    assert srv.requests[1].startswith(method.encode() + b" / ")


@pytest.mark.parametrize("method", ["GET", "POST"])
@both_loops
async def test_reused_connection_closed_after_the_request_was_written(method: str) -> None:
    """The close races the request: only an idempotent request may be sent again."""

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        if srv.connections == 1:
            writer.write(OK)
            await srv.read_request(reader)  # read the second request, then hang up unanswered
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nretry")
            await srv.read_request(reader)

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        assert await get(pool) == b"ok"
        if method == "GET":
            assert await get(pool) == b"retry"
            assert srv.connections == 2
            assert srv.requests[1] == srv.requests[2]
        else:
            with pytest.raises(ConnectionClosed):
                await get(pool, "POST", b"{}")
            assert srv.connections == 1
            assert await get(pool) == b"retry"  # the pool recovers


@both_loops
async def test_limit_one_makes_the_second_request_wait() -> None:
    answer_first = asyncio.Event()

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            if len(srv.requests) == 1:
                await answer_first.wait()
            writer.write(OK)

    async with Server(handler) as srv, Pool(srv.origin, limit=1) as pool:
        first = asyncio.create_task(get(pool))
        await eventually(lambda: len(srv.requests) == 1)
        second = asyncio.create_task(get(pool))
        await asyncio.sleep(0.05)
        assert not second.done() and len(srv.requests) == 1
        answer_first.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [b"ok", b"ok"]
    assert (srv.connections, srv.max_open, len(srv.requests)) == (1, 1, 2)


@both_loops
async def test_a_woken_waiter_that_is_cancelled_passes_its_turn_on() -> None:
    async with Server(answer(OK)) as srv, Pool(srv.origin, limit=1) as pool:
        held = await pool.request("GET", "/", [])
        assert await held.read() == b"ok"
        cancelled, waiting = asyncio.create_task(get(pool)), asyncio.create_task(get(pool))
        await asyncio.sleep(0.02)
        held.release()  # wakes `cancelled`, which leaves before it runs
        cancelled.cancel()
        assert await asyncio.wait_for(waiting, 0.5) == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    assert srv.connections == 1


@both_loops
async def test_a_request_cancelled_while_connecting_frees_its_slot_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled between `connection_made` and `create_connection` returning: counted once."""
    answer_first = asyncio.Event()

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            await answer_first.wait()
            writer.write(OK)

    async with Server(handler) as srv, Pool(srv.origin, limit=1) as pool:
        made = lean._Connection.connection_made
        task: asyncio.Task[bytes] | None = None

        def made_then_cancel(self: lean._Connection, transport: asyncio.BaseTransport) -> None:
            made(self, transport)
            assert task is not None
            task.cancel()

        monkeypatch.setattr(lean._Connection, "connection_made", made_then_cancel)
        task = asyncio.create_task(get(pool))
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        await eventually(lambda: srv.open == 0)
        # The limit still holds: one connection, and the second request waits for it.
        both = asyncio.gather(get(pool), get(pool))
        await eventually(lambda: len(srv.requests) == 1)
        await asyncio.sleep(0.05)
        assert srv.max_open == 1
        answer_first.set()
        assert await asyncio.wait_for(both, 1) == [b"ok", b"ok"]
    assert srv.max_open == 1


@both_loops
async def test_idle_connections_expire() -> None:
    async with Server(answer(OK)) as srv, Pool(srv.origin, idle_timeout=0.05) as pool:
        assert await get(pool) == b"ok"
        assert await get(pool) == b"ok"  # at once: reused
        await asyncio.sleep(0.1)
        assert await get(pool) == b"ok"  # too old: closed and replaced
        await eventually(lambda: srv.eofs == 1)
    assert srv.connections == 2


@both_loops
async def test_pool_close_fails_waiters_and_drops_busy_connections_when_released() -> None:
    async with Server(answer(OK)) as srv:
        pool = Pool(srv.origin, limit=1)
        busy = await pool.request("GET", "/", [])
        waiter = asyncio.create_task(get(pool))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        await pool.close()
        with pytest.raises(ConnectFailed):
            await waiter
        assert await busy.read() == b"ok"
        busy.release()  # a closed pool does not keep it
        await eventually(lambda: srv.eofs == 1)
        with pytest.raises(ConnectFailed):
            await pool.request("GET", "/", [])
    assert srv.connections == 1


@both_loops
async def test_pool_close_closes_idle_connections() -> None:
    async with Server(answer(OK)) as srv:
        pool = Pool(srv.origin)
        busy = await pool.request("GET", "/", [])
        assert await get(pool) == b"ok"  # a second connection, idle now
        assert await busy.read() == b"ok"
        busy.release()
        await asyncio.sleep(0.02)
        assert (srv.connections, srv.eofs) == (2, 0)
        await pool.close()
        await eventually(lambda: srv.eofs == 2)


@both_loops
async def test_http_client_keeps_a_pool_per_origin() -> None:
    async with (
        Server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")) as one,
        Server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")) as two,
    ):
        client = HTTPClient(read_timeout=1.0)
        try:
            for url, body in [(f"{one.origin}/a?q=1", b"one"), (f"{two.origin}/b", b"two"),
                              (one.origin, b"one"), (f"{two.origin}/c", b"two")]:
                resp = await client.request("GET", url, [])
                assert await resp.read() == body
                resp.release()
        finally:
            await client.close()
        await eventually(lambda: (one.eofs, two.eofs) == (1, 1))
    assert (one.connections, two.connections) == (1, 1)
    host = b"Host: 127.0.0.1:%d" % one.port
    assert [r.split(b"\r\n", 2)[:2] for r in one.requests] == [[b"GET /a?q=1 HTTP/1.1", host], [b"GET / HTTP/1.1", host]]  # noqa: E501
    assert [r.split(b"\r\n", 1)[0] for r in two.requests] == [b"GET /b HTTP/1.1", b"GET /c HTTP/1.1"]


@both_loops
async def test_ipv6_host_header() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with Server(answer(OK), host="::1") as srv, Pool(srv.origin) as pool:
        assert await get(pool) == b"ok"
    assert srv.requests[0].split(b"\r\n")[1] == b"Host: [::1]:%d" % srv.port


# ------------------------------------------------------------------------ failures


@both_loops
async def test_read_timeout_before_the_headers() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await srv.read_request(reader)  # never answers

    async with Server(handler) as srv, Pool(srv.origin, read_timeout=0.2) as pool:
        with pytest.raises(ReadTimeout) as info:
            await pool.request("GET", "/", [])
        assert isinstance(info.value, TimeoutError)
        await eventually(lambda: srv.eofs == 1)  # the connection was dropped, not pooled


@pytest.mark.parametrize("how", ["read", "iter_chunks"])
@both_loops
async def test_read_timeout_in_the_body(how: str) -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await srv.read_request(reader)

    async with Server(handler) as srv, Pool(srv.origin, read_timeout=0.2) as pool:
        resp = await pool.request("GET", "/", [])
        got = []
        with pytest.raises(ReadTimeout):
            if how == "read":
                await resp.read()
            else:
                async with aclosing(resp.iter_chunks()) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)
        assert got == ([b"abc"] if how == "iter_chunks" else [])
        resp.close()
        await eventually(lambda: srv.eofs == 1)


@both_loops
async def test_refused_port_is_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        pool = Pool(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(ConnectFailed) as info:
                await pool.request("GET", "/", [])
            assert not isinstance(info.value, TimeoutError)
            with pytest.raises(ConnectFailed):  # the failed attempt gave its slot back
                await pool.request("GET", "/", [])
        finally:
            await pool.close()


@both_loops
async def test_connect_timeout() -> None:
    """A listener whose accept queue is full drops SYNs, so the connect hangs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(3):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(listener.getsockname())
        pool = Pool(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.1)
        try:
            with pytest.raises(ConnectTimeout) as info:
                await pool.request("GET", "/", [])
            assert isinstance(info.value, TimeoutError) and isinstance(info.value, ConnectFailed)
        finally:
            await pool.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@both_loops
async def test_garbage_is_a_protocol_error() -> None:
    async with Server(answer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ProtocolError):
            await pool.request("GET", "/", [])
        await eventually(lambda: srv.eofs == 1)


@both_loops
async def test_close_before_answering_on_a_fresh_connection() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.close()
        await writer.wait_closed()

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ConnectionClosed):
            await pool.request("GET", "/", [])  # idempotent, but nothing to retry: it was fresh
    assert (srv.connections, len(srv.requests)) == (1, 1)


async def _close_mid_length_body(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    writer.close()
    await writer.wait_closed()


async def _reset_mid_close_delimited_body(writer: asyncio.StreamWriter) -> None:
    """A body that only the connection's end delimits, ended by a reset instead of a FIN."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhalf of it")
    await writer.drain()
    await asyncio.sleep(0.02)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    writer.transport.abort()


@pytest.mark.parametrize("cut", [_close_mid_length_body, _reset_mid_close_delimited_body], ids=["length", "reset"])
@both_loops
async def test_a_body_cut_short_is_an_error(cut: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await cut(writer)

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        with pytest.raises(ConnectionClosed):
            await resp.read()
        resp.close()


@both_loops
async def test_closing_a_half_read_response_drops_the_connection() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            if len(srv.requests) > 1:
                writer.write(b"0\r\n\r\n")

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        async with aclosing(resp.iter_chunks()) as chunks:
            assert await anext(chunks) == b"first"
        resp.close()
        await eventually(lambda: srv.eofs == 1)  # the server sees the socket go
        assert await get(pool) == b"first"
    assert srv.connections == 2


@both_loops
async def test_unread_body_is_not_reused_on_release() -> None:
    async with Server(answer(OK)) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        await asyncio.sleep(0.02)  # the body is in, but nobody read it
        resp.release()
        assert await get(pool) == b"ok"
    assert srv.connections == 2


@both_loops
async def test_line_breaks_and_spaces_are_rejected_before_sending() -> None:
    async with Server(answer(OK)) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", "/", [("X-Evil", "a\r\nInjected: yes")])
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", "/", [("X-Evil\r\nInjected", "yes")])
        with pytest.raises(ValueError, match="whitespace"):
            await pool.request("GET", "/a b", [])
        with pytest.raises(ValueError, match="whitespace"):
            await pool.request("GET", "/a\r\nInjected: yes", [])
        await asyncio.sleep(0.02)
        assert srv.connections == 0
        assert await get(pool) == b"ok"  # nothing was leaked or left half-done


# ------------------------------------------------------------------------ backpressure

BIG = random.Random(7).randbytes(16 << 20)


@pytest.mark.parametrize(("framing", "how"), [("length", "read"), ("chunked", "iter_chunks"),
                                              ("length", "iter_chunks"), ("chunked", "read")])
@both_loops
async def test_backpressure_on_a_large_body(framing: str, how: str) -> None:
    sent = 0
    done = asyncio.Event()

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await srv.read_request(reader)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        chunked = framing == "chunked"
        header = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(BIG)
        writer.write(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n" % header)
        for start in range(0, len(BIG), 1 << 16):
            piece = BIG[start:start + (1 << 16)]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            sent += len(piece)
        writer.write(b"0\r\n\r\n" if chunked else b"")
        done.set()
        while await srv.read_request(reader):
            writer.write(OK)

    async with Server(handler) as srv:
        pool = Pool(srv.origin, read_timeout=0.5)
        resp = await pool.request("GET", "/", [])
        try:
            async with asyncio.timeout(2):  # not reading, until the server can send no more
                while True:
                    before = sent
                    await asyncio.sleep(0.05)
                    if sent == before:
                        break
            assert sent < len(BIG) and not done.is_set()  # the server's drain() blocks
            assert resp._buffered < 4 << 20  # the client holds about _HIGH_WATER, not the body
            if how == "read":
                body = await resp.read()
            else:
                body = b"".join([chunk async for chunk in resp.iter_chunks()])
            assert len(body) == len(BIG) and body == BIG
            assert done.is_set()
            resp.release()
            assert await get(pool) == b"ok"  # the connection was sane and was reused
        finally:
            resp.close()  # a no-op once released; after a failed assert, the paused socket
            await pool.close()
    assert srv.connections == 1


# ------------------------------------------------------------------------ TLS


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    return self_signed(tmp_path)


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return certs.server_context(*certificate)


@both_loops
async def test_tls_with_a_trusted_certificate(certificate: tuple[Path, Path]) -> None:
    secret = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret"
    async with Server(answer(secret), server_context(certificate)) as srv:
        assert srv.origin.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(certificate[0]))
        pool = Pool(srv.origin, ssl_context=trusting)
        try:
            assert await get(pool) == b"secret"
            assert await get(pool) == b"secret"
        finally:
            await pool.close()
    assert srv.connections == 1
    assert srv.requests[0].split(b"\r\n")[1] == b"Host: 127.0.0.1:%d" % srv.port


@both_loops
async def test_tls_with_the_default_context_rejects_a_self_signed_certificate(
    certificate: tuple[Path, Path],
) -> None:
    async with Server(answer(OK), server_context(certificate)) as srv, Pool(srv.origin, connect_timeout=1.0) as pool:
        with pytest.raises(ConnectFailed) as info:
            await pool.request("GET", "/", [])
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert srv.requests == []



@both_loops
async def test_a_second_unasked_response_drops_the_connection() -> None:
    extra = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    async with Server(answer(OK + extra, OK)) as srv, Pool(srv.origin) as pool:
        resp = await pool.request("GET", "/", [])
        # Bytes past the declared end: the body may have been longer than its
        # Content-Length said (R7), so the answer is not trusted.
        with pytest.raises(ProtocolError, match="more than one response"):
            await resp.read()
        assert resp.status == 200  # not overwritten by the stray answer
        resp.release()
        assert await get(pool) == b"ok"
    assert srv.connections == 2  # the out-of-step connection was not reused
