"""The lean pipelined Redis client of the limits' hot path, against a real redis-server."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis

from proxy.state.resp import _INCOMPLETE, RespClient, RespConnectionError, RespError, _parse, encode
from proxy.testing import RedisServer


async def test_pipelined_calls_answer_in_order(redis_server: RedisServer) -> None:
    client = RespClient(redis_server.url)
    try:
        await client.call("DEL", "resp:n")
        results = await asyncio.gather(*(client.call("INCR", "resp:n") for _ in range(200)))
        assert results == list(range(1, 201))
        assert await client.call("SET", "resp:s", "héllo") == "OK"
        assert await client.call("GET", "resp:s") == "héllo".encode()
        assert await client.call("GET", "resp:missing") is None
        assert await client.call("EVAL", "return {1, 'a', {2}}", 0) == [1, b"a", [2]]
        with pytest.raises(RespError, match="ERR"):
            await client.call("NOSUCHCOMMAND")
        assert await client.call("PING") == "PONG"  # an error reply leaves the connection usable
    finally:
        await client.close()


async def test_a_cancelled_caller_leaves_the_connection_usable(redis_server: RedisServer) -> None:
    client = RespClient(redis_server.url)
    try:
        await client.call("PING")
        slow = asyncio.ensure_future(client.call("EVAL", "local i = 0 while i < 2000000 do i = i + 1 end return i", 0))
        after = asyncio.ensure_future(client.call("ECHO", "after"))
        await asyncio.sleep(0)
        slow.cancel()
        assert await after == b"after"  # its reply was read past the cancelled one's
        assert await client.call("ECHO", "again") == b"again"
    finally:
        await client.close()


async def test_the_database_in_the_url_is_selected(redis_server: RedisServer) -> None:
    client = RespClient(redis_server.url.rsplit("/", 1)[0] + "/3")
    try:
        await client.call("SET", "resp:db", "3")
    finally:
        await client.close()
    with redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3") as r:
        assert r.get("resp:db") == b"3"
    with redis.Redis.from_url(redis_server.url) as r:
        assert r.get("resp:db") is None


async def test_reconnects_after_redis_restarts() -> None:
    with RedisServer() as server:
        client = RespClient(server.url, timeout=0.5)
        try:
            assert await client.call("PING") == "PONG"
            server.stop()
            with pytest.raises(RespConnectionError):
                await client.call("PING")
            server.start()
            assert await client.call("PING") == "PONG"
        finally:
            await client.close()


async def test_a_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts, never answers: a black-holed Redis
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RespConnectionError, match="did not answer"):
                await client.call("PING")
            assert loop.time() - started < 2
        finally:
            await client.close()


def test_parse_waits_for_whole_replies() -> None:
    data = encode(["SET", "k", "v"])
    assert data == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
    reply = b"*2\r\n$3\r\nabc\r\n:-5\r\n"
    for cut in range(1, len(reply)):
        assert _parse(reply[:cut], 0)[0] is _INCOMPLETE, f"a partial reply parsed at {cut}"
    assert _parse(reply, 0) == ([b"abc", -5], len(reply))


async def test_replies_split_anywhere_reach_their_callbacks_in_order() -> None:
    """Replies read where they arrive, or kept until their rest comes: each callback gets its own."""
    from proxy.state.resp import _Connection

    stream = b"$3\r\nabc\r\n:7\r\n-ERR no\r\n$0\r\n\r\n*1\r\n:1\r\n"
    for cut in range(len(stream) + 1):
        for second in range(cut, len(stream) + 1):
            conn = _Connection(timeout=1.0)
            got: list[object] = []
            for _ in range(5):
                conn.waiters.append((0.0, got.append))
            for part in (stream[:cut], stream[cut:second], stream[second:]):
                if part:
                    conn.data_received(part)
            assert got[:2] == [b"abc", 7] and isinstance(got[2], RespError) and got[3:] == [b"", [1]], (cut, second)
            assert not conn.buf and not conn.waiters
