"""The lean client's hardening (issue 8), against raw loopback servers, on both loops."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from fakes.certs import self_signed, server_context
from fakes.forward_proxy import ForwardProxy
from test_lean_client import OK, Server, answer, both_loops, eventually, get

from proxy.upstream import connect
from proxy.upstream.lean import HTTPClient, Pool
from proxy.upstream.transport import (
    ConnectFailed,
    PoolTimeout,
    ProtocolError,
    ResponseTooLarge,
    TLSFailed,
    TransportSettings,
)


@both_loops
async def test_s1_a_paused_connection_is_resumed_before_it_is_pooled() -> None:
    """The body crosses the 1 MiB pause mark in the same read that completes it."""
    size = (1 << 20) + 4096
    first = (1 << 20) - 4096

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        body = b"b" * size
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body[:first])
        await writer.drain()
        await asyncio.sleep(0.2)  # the client buffers it without reading (under the mark)
        writer.write(body[first:])  # crosses the mark and ends the body at once
        while await srv.read_request(reader):
            writer.write(OK)

    async with Server(handler) as srv, Pool(srv.origin, read_timeout=1.0) as pool:
        resp = await pool.request("GET", "/", [])
        await asyncio.sleep(0.5)  # the reader falls behind while everything arrives
        assert len(await resp.read()) == size
        resp.release()
        assert await get(pool) == b"ok"  # hung until the read timeout when pooled paused
    assert srv.connections == 1


@pytest.mark.parametrize(
    "head",
    [b"".join(b"X-H%d: v\r\n" % i for i in range(129)), b"X-Big: " + b"a" * (65 * 1024) + b"\r\n"],
    ids=["129 headers", "65 KiB"],
)
@both_loops
async def test_r1_response_head_caps(head: bytes) -> None:
    response = b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok"
    async with Server(answer(response)) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ResponseTooLarge):
            await pool.request("GET", "/", [])


@both_loops
async def test_r1_a_head_that_never_ends_is_cut_at_the_cap() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        while True:
            writer.write(b"a" * 65536)
            await writer.drain()

    async with Server(handler) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ResponseTooLarge):
            await pool.request("GET", "/", [])


@both_loops
async def test_128_headers_and_nul_free_values_are_fine() -> None:
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(127))
    async with Server(answer(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")) as srv, \
            Pool(srv.origin) as pool:
        assert await get(pool) == b"ok"


@pytest.mark.parametrize("bad", [b"X-A: a\x00b\r\n", b"X A: b\r\n", b"X-A: a\x01b\r\n"])
@both_loops
async def test_control_characters_and_non_token_names_in_answers_are_refused(bad: bytes) -> None:
    async with Server(answer(b"HTTP/1.1 200 OK\r\n" + bad + b"Content-Length: 2\r\n\r\nok")) as srv, \
            Pool(srv.origin) as pool:
        with pytest.raises(ProtocolError):
            await pool.request("GET", "/", [])


@both_loops
async def test_control_characters_and_non_token_names_are_not_sent() -> None:
    async with Server(answer(OK)) as srv, Pool(srv.origin) as pool:
        for headers in ([("X-A", "a\x00b")], [("X-A", "a\x7f")], [("X A", "b")], [("X:A", "b")], [("", "b")]):
            with pytest.raises(ValueError):
                await pool.request("GET", "/", headers)
        with pytest.raises(ValueError):
            await pool.request("GET", "/a\x00", [])
        with pytest.raises(ValueError):
            await pool.request("G T", "/", [])
    assert srv.connections == 0


@both_loops
async def test_r5_interim_answers_are_bounded() -> None:
    flood = b"HTTP/1.1 103 Early Hints\r\n\r\n" * 40
    async with Server(answer(flood + OK)) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ProtocolError, match="interim"):
            await pool.request("GET", "/", [])


@both_loops
async def test_r5_a_few_interim_answers_are_skipped() -> None:
    async with Server(answer(b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + OK)) as srv, Pool(srv.origin) as pool:
        assert await get(pool) == b"ok"


@both_loops
async def test_r7_a_101_upgrade_is_a_protocol_error() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x00"
    async with Server(answer(upgrade)) as srv, Pool(srv.origin) as pool:
        with pytest.raises(ProtocolError):
            await pool.request("GET", "/", [])


@both_loops
async def test_r7_idle_connections_close_when_they_expire_without_a_next_request() -> None:
    async with Server(answer(OK)) as srv, Pool(srv.origin, idle_timeout=0.2) as pool:
        assert await get(pool) == b"ok"
        assert srv.open == 1
        await eventually(lambda: srv.open == 0, timeout=2)  # nobody used the pool again
        assert pool._open == 0


@both_loops
async def test_a_whole_body_over_the_cap_is_refused() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n"
    async with Server(answer(big, chunked)) as srv, Pool(srv.origin, max_body_size=1000) as pool:
        for _ in range(2):
            resp = await pool.request("GET", "/", [])
            with pytest.raises(ResponseTooLarge):
                await resp.read()
            resp.close()


@both_loops
async def test_r3_pool_timeout() -> None:
    async def slow(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader):
            await asyncio.sleep(2)
            writer.write(OK)

    async with Server(slow) as srv, Pool(srv.origin, limit=1, pool_timeout=0.2) as pool:
        first = asyncio.ensure_future(pool.request("GET", "/", []))
        await eventually(lambda: len(srv.requests) == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PoolTimeout):
            await pool.request("GET", "/", [])
        assert loop.time() - started < 1.5
        first.cancel()


@both_loops
async def test_happy_eyeballs_races_past_an_address_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first address drops SYNs (a full listen queue); the second one answers.

    Tried one after the other, the first would take the whole connect timeout.
    """
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue: further SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(blackhole.getsockname())
            fillers.append(filler)
        await asyncio.sleep(0.1)
        async with Server(answer(OK)) as srv, HTTPClient(connect_timeout=3) as client:
            loop = asyncio.get_running_loop()
            dead, live = blackhole.getsockname(), ("127.0.0.1", srv.port)

            async def resolve(loop: object, host: str, port: int) -> list[Any]:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", addr) for addr in (dead, live)]

            monkeypatch.setattr(connect, "resolve", resolve)
            started = loop.time()
            resp = await client.request("GET", f"http://upstream.test:{srv.port}/", [])
            assert await resp.read() == b"ok"
            resp.release()
            assert loop.time() - started < 1.5
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


@both_loops
async def test_yarl_parsing_query_without_path_and_userinfo() -> None:
    async with Server(answer(OK)) as srv, HTTPClient() as client:
        host = srv.origin.removeprefix("http://")
        resp = await client.request("GET", f"http://user:p%40ss@{host}?x=1", [])
        await resp.read()
        resp.release()
    request = srv.requests[0]
    assert request.startswith(b"GET /?x=1 HTTP/1.1\r\n")
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in request  # user:p@ss
    assert b"user" not in request.split(b"\r\n")[1]  # Host carries no userinfo


@both_loops
async def test_tls_failure_says_why(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with Server(answer(OK), server_context(cert, key)) as srv, Pool(srv.origin) as pool:
        with pytest.raises(TLSFailed) as info:
            await pool.request("GET", "/", [])
    assert "certificate verify failed" in info.value.reason


@both_loops
async def test_connect_tunnel_through_a_proxy(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with ForwardProxy() as proxy:
        trusting = ssl.create_default_context(cafile=str(cert))
        settings = TransportSettings(ssl_context=trusting, proxies={"https": proxy.url})
        async with Server(answer(OK, OK), server_context(cert, key)) as srv, Pool(srv.origin, settings) as pool:
            assert await get(pool) == b"ok"
            assert await get(pool) == b"ok"  # the tunnelled connection is reused
        assert proxy.seen == [f"CONNECT 127.0.0.1:{srv.port} HTTP/1.1"]
        assert srv.connections == 1


@both_loops
async def test_a_proxy_that_refuses_the_tunnel_is_a_connect_failure() -> None:
    async def refuse(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with Server(refuse) as proxy:
        settings = TransportSettings(proxies={"https": proxy.origin})
        async with Pool("https://127.0.0.1:9", settings) as pool:
            with pytest.raises(ConnectFailed, match="407"):
                await pool.request("GET", "/", [])
