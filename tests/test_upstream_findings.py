"""Regression tests for issue 8's findings, through the gateway against hostile upstreams.

Each upstream here is a raw loopback server (`fakes.raw_upstream`) that sends exactly
the bytes a finding needs; the gateway runs as `serve` would. Timeouts are short and
generous at once: a finding that came back hangs until the bound and fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, post_json, sse_data
from fakes.certs import self_signed, server_context
from fakes.forward_proxy import ForwardProxy
from fakes.raw_upstream import CHAT_BODY, RawUpstream, answer, json_response

from proxy.testing import Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[RawUpstream]:
    """An https upstream with a self-signed certificate; `.ca_file` trusts it."""
    cert, key = self_signed(tmp_path)
    with RawUpstream(answer(json_response(CHAT_BODY)), ssl_context=server_context(cert, key)) as up:
        up.ca_file = str(cert)  # type: ignore[attr-defined]
        yield up


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as proxy:
        yield proxy


def gateway_config(url: str, provider: str = "", server: str = "") -> str:
    return (
        (f"server:\n{server}" if server else "")
        + "clients:\n  keys:\n    - {name: team-a, key: \"${CLIENT_KEY}\"}\n"
        + "providers:\n"
        + f"  up:\n    type: openai\n    base_url: {url}/v1\n    api_key: sk-upstream-0123456789abcdef\n"
        + "    read_timeout: 5\n    connect_timeout: 2\n"
        + provider
        + "routes:\n  - {model: \"*\", to: up}\n"
    )


def chat(gw: Gateway, body: dict[str, Any] = CHAT, timeout: float = 20) -> Any:
    return post_json(f"{gw.base_url}/chat/completions", body, timeout=timeout)


# ------------------------------------------------------------------ S1: a large answer poisons the pool


@pytest.mark.parametrize("size", [1_500_000])
def test_s1_a_large_answer_leaves_its_connection_usable(make_gateway: Callable[..., Gateway], size: int) -> None:
    """End to end; the deterministic regression test is test_lean_hardening's (the race
    needs the reader to fall behind by more than 1 MiB exactly as the body ends)."""
    big = b'{"object":"list","data":[],"pad":"' + b"x" * size + b'"}'
    with RawUpstream(answer(json_response(big), json_response(CHAT_BODY))) as up:
        gw = make_gateway(gateway_config(up.url, "    max_connections: 1\n    read_timeout: 3\n"))
        assert chat(gw).status == 200  # the large one
        started = time.monotonic()
        statuses = [chat(gw).status for _ in range(20)]
        assert statuses == [200] * 20
        assert time.monotonic() - started < 3  # none waited for the read timeout
        assert up.connections == 1  # and the same connection served them all


# ------------------------------------------------------------------ S8 / R3: stalled clients, pool waits


async def _endless_stream(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if not await up.read_request(reader):
        return
    if up.state.setdefault("streams", 0) >= 1:  # later requests: a normal answer
        writer.write(json_response(CHAT_BODY))
        return
    up.state["streams"] += 1
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"y" * 4000 + b'"}}]}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    while True:
        writer.write(chunk * 16)
        await writer.drain()


def test_s8_a_client_that_stops_reading_is_dropped_and_frees_the_pool(make_gateway: Callable[..., Gateway]) -> None:
    with RawUpstream(_endless_stream) as up:
        gw = make_gateway(gateway_config(up.url, "    max_connections: 1\n", server="  write_timeout: 1\n"))
        stalled = socket.create_connection(("127.0.0.1", gw.port))
        try:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = orjson.dumps(STREAM)
            stalled.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (CLIENT_KEY.encode(), len(body), body)
            )
            deadline = time.monotonic() + 5
            while up.state.get("streams") != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            # The stalled stream holds the only upstream connection until write_timeout drops it.
            resp = chat(gw, timeout=15)
            assert resp.status == 200
            records = gw.wait_access_log(2)
            dropped = [r for r in records if r.get("error") == "client_write_timeout"]
            assert len(dropped) == 1
            assert "client_write_timeout" in gw.log_text or "dropped" in gw.log_text
        finally:
            stalled.close()


async def _slow_first(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await up.read_request(reader):
        await asyncio.sleep(3)
        writer.write(json_response(CHAT_BODY))


def test_r3_waiting_for_a_pooled_connection_is_bounded(make_gateway: Callable[..., Gateway]) -> None:
    with RawUpstream(_slow_first) as up:
        gw = make_gateway(gateway_config(up.url, "    max_connections: 1\n    pool_timeout: 0.5\n"))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(chat, gw)
            deadline = time.monotonic() + 5
            while not up.requests and time.monotonic() < deadline:  # the first holds the connection
                time.sleep(0.01)
            started = time.monotonic()
            second = chat(gw)
            elapsed = time.monotonic() - started
            assert first.result().status == 200
        assert second.status == 503
        assert second.json["error"]["code"] == "upstream_pool_timeout"
        assert elapsed < 2.5  # answered at pool_timeout, not after the first call


# ------------------------------------------------------------------ R1: response head caps


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(200)),  # too many headers
        b"X-Big: " + b"a" * (100 * 1024) + b"\r\n",  # one header over 64 KiB
        b"X-Huge: " + b"a" * (16 << 20) + b"\r\n",  # 16 MiB: refused long before it is parsed
    ],
    ids=["count", "bytes", "huge"],
)
def test_r1_oversized_response_heads_are_refused(make_gateway: Callable[..., Gateway], head: bytes) -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head + b"Content-Length: 2\r\n\r\n{}"
    with RawUpstream(answer(response)) as up:
        gw = make_gateway(gateway_config(up.url))
        started = time.monotonic()
        resp = chat(gw)
        assert resp.status == 502, resp.body[:200]
        assert time.monotonic() - started < 3
        assert "over the gateway's limits" in resp.json["error"]["message"]


# ------------------------------------------------------------------ R2: compressed answers


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


def test_r2_gzip_json_is_decoded_and_counted(make_gateway: Callable[..., Gateway]) -> None:
    body = _gz(CHAT_BODY)
    response = json_response(body, extra=b"Content-Encoding: gzip\r\n")
    with RawUpstream(answer(response)) as up:
        gw = make_gateway(gateway_config(up.url))
        resp = chat(gw)
        assert resp.status == 200
        assert resp.header("content-encoding") is None
        assert resp.json["choices"][0]["message"]["content"] == "hi"
        assert gw.wait_access_log(1)[-1]["tokens_in"] == 3
        assert b"accept-encoding: identity" in up.requests[0].lower()


def test_r2_deflate_sse_is_decoded_as_it_streams(make_gateway: Callable[..., Gateway]) -> None:
    events = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        b'"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
        b"data: [DONE]\n\n"
    )
    packed = zlib.compress(events)
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: deflate\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed)
    )
    with RawUpstream(answer(response)) as up:
        gw = make_gateway(gateway_config(up.url))
        resp = chat(gw, STREAM)
        assert resp.status == 200
        data = sse_data(resp.body)
        assert data[-1] == b"[DONE]"
        assert orjson.loads(data[0])["choices"][0]["delta"]["content"] == "hi"
        assert gw.wait_access_log(1)[-1]["tokens_out"] == 2


def test_r2_an_encoding_the_gateway_cannot_decode_is_a_502(make_gateway: Callable[..., Gateway]) -> None:
    response = json_response(b"\x1b\x00\x00", extra=b"Content-Encoding: br\r\n")
    with RawUpstream(answer(response)) as up:
        gw = make_gateway(gateway_config(up.url))
        resp = chat(gw)
        assert resp.status == 502
        assert "Content-Encoding 'br'" in resp.json["error"]["message"]


# ------------------------------------------------------------------ R4: SSE event size


async def _endless_line(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await up.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: ")
    for _ in range(64):  # 8 MiB and more, never a newline
        writer.write(b"z" * (128 * 1024))
        await writer.drain()
    await asyncio.sleep(5)


def test_r4_an_sse_event_over_the_cap_ends_the_stream(make_gateway: Callable[..., Gateway]) -> None:
    with RawUpstream(_endless_line) as up:
        gw = make_gateway(gateway_config(up.url, "    max_event_size: 1048576\n"))
        started = time.monotonic()
        resp = chat(gw, STREAM)
        assert time.monotonic() - started < 4
        assert resp.status == 502
        assert resp.json["error"]["code"] == "upstream_event_too_large"


# ------------------------------------------------------------------ R5: 1xx flood


async def _interim_flood(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await up.read_request(reader)
    for _ in range(5000):
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
        await writer.drain()
    await asyncio.sleep(10)


def test_r5_a_flood_of_interim_answers_is_cut_short(make_gateway: Callable[..., Gateway]) -> None:
    with RawUpstream(_interim_flood) as up:
        gw = make_gateway(gateway_config(up.url))
        started = time.monotonic()
        resp = chat(gw)
        assert resp.status == 502
        assert time.monotonic() - started < 3  # not the read timeout


# ------------------------------------------------------------------ R7: odd statuses, long bodies, upgrades


@pytest.mark.parametrize("status", [b"999 Whatever", b"302 Found", b"101 Switching Protocols"])
def test_r7_statuses_that_are_no_final_answer_are_502(make_gateway: Callable[..., Gateway], status: bytes) -> None:
    extra = b"Location: http://169.254.169.254/\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    response = b"HTTP/1.1 %s\r\n%sContent-Length: 2\r\n\r\n{}" % (status, extra)
    with RawUpstream(answer(response)) as up:
        gw = make_gateway(gateway_config(up.url))
        resp = chat(gw)
        assert resp.status == 502, (resp.status, resp.body)
        assert resp.header("location") is None
        assert "Traceback" not in gw.log_text


def test_r7_a_body_longer_than_its_content_length_is_not_a_200(make_gateway: Callable[..., Gateway]) -> None:
    response = json_response(CHAT_BODY).replace(b"Content-Length: %d" % len(CHAT_BODY), b"Content-Length: 40")
    with RawUpstream(answer(response)) as up:
        gw = make_gateway(gateway_config(up.url))
        resp = chat(gw)
        assert resp.status == 502


# ------------------------------------------------------------------ C4 / S11: what a relayed answer carries

_LIMIT_HEADERS = (
    b"x-ratelimit-limit-requests: 500\r\nx-ratelimit-remaining-requests: 499\r\n"
    b"x-ratelimit-reset-requests: 120ms\r\nopenai-processing-ms: 42\r\nretry-after-ms: 900\r\n"
)


def test_c4_upstream_rate_limit_headers_are_relayed(make_gateway: Callable[..., Gateway]) -> None:
    limited = (
        b'{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
    )
    with RawUpstream(
        answer(json_response(CHAT_BODY, extra=_LIMIT_HEADERS),
               json_response(limited, "429 Too Many Requests", extra=_LIMIT_HEADERS + b"retry-after: 1\r\n"))
    ) as up:
        gw = make_gateway(gateway_config(up.url))
        with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
            ok = client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
            assert ok.headers["x-ratelimit-remaining-requests"] == "499"
            assert ok.headers["openai-processing-ms"] == "42"
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            headers = info.value.response.headers
            assert headers["retry-after"] == "1"
            assert headers["retry-after-ms"] == "900"
            assert headers["x-ratelimit-limit-requests"] == "500"


@pytest.mark.parametrize("status", [b"400 Bad Request", b"404 Not Found", b"429 Too Many Requests", b"500 Oops"])
def test_s11_the_upstream_key_is_redacted_from_relayed_errors(
    make_gateway: Callable[..., Gateway], status: bytes
) -> None:
    key = "sk-upstream-0123456789abcdef"
    message = f"Bad key {key}, or rather sk-ups...{key[-12:]} (partial)"
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    with RawUpstream(answer(json_response(body, status.decode()))) as up:
        gw = make_gateway(gateway_config(up.url))
        resp = chat(gw)
        assert resp.status >= 400
        text = resp.body.decode()
        assert key not in text and key[-12:] not in text and "456789abcdef" not in text


# ------------------------------------------------------------------ R6: TLS failures say what failed


def test_r6_a_tls_failure_is_named_in_the_log_and_a_distinct_code(make_gateway: Callable[..., Gateway],
                                                                 tls_upstream: Any) -> None:
    gw = make_gateway(gateway_config(tls_upstream.url))
    resp = chat(gw)
    assert resp.status == 503
    assert resp.json["error"]["code"] == "upstream_tls_error"
    assert "certificate" not in resp.json["error"]["message"]  # details stay in the log
    assert "certificate verify failed" in gw.log_text


def test_tls_per_provider_trusts_its_own_ca(make_gateway: Callable[..., Gateway], tls_upstream: Any) -> None:
    gw = make_gateway(gateway_config(tls_upstream.url, f"    tls: {{ca_file: {tls_upstream.ca_file}}}\n"))
    assert chat(gw).status == 200
    gw2 = make_gateway(gateway_config(tls_upstream.url, "    tls: {verify: false}\n"))
    assert chat(gw2).status == 200


def test_tls_client_certificate(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    client_cert, client_key = self_signed(tmp_path, "client-", client=True)
    context = server_context(cert, key, client_ca=client_cert)
    with RawUpstream(answer(json_response(CHAT_BODY)), ssl_context=context) as up:
        mutual = f"    tls: {{ca_file: {cert}, client_cert: {client_cert}, client_key: {client_key}}}\n"
        assert chat(make_gateway(gateway_config(up.url, mutual))).status == 200
        anonymous = make_gateway(gateway_config(up.url, f"    tls: {{ca_file: {cert}}}\n"))
        refused = chat(anonymous)
        assert refused.status in (502, 503)  # the server ends the handshake, or the first read
        assert up.requests == [up.requests[0]]  # only the authenticated request arrived


# ------------------------------------------------------------------ egress proxies


def test_http_proxy_is_used_for_an_http_upstream(make_gateway: Callable[..., Gateway], forward_proxy: Any) -> None:
    with RawUpstream(answer(json_response(CHAT_BODY))) as up:
        gw = make_gateway(gateway_config(up.url), env={"HTTP_PROXY": forward_proxy.url, "NO_PROXY": "example.org"})
        assert chat(gw).status == 200
        assert forward_proxy.seen and forward_proxy.seen[0].startswith(f"POST {up.url}/v1/chat/completions")


def test_no_proxy_and_proxy_false_connect_directly(make_gateway: Callable[..., Gateway], forward_proxy: Any) -> None:
    with RawUpstream(answer(json_response(CHAT_BODY))) as up:
        gw = make_gateway(gateway_config(up.url), env={"HTTP_PROXY": forward_proxy.url, "NO_PROXY": "127.0.0.1"})
        assert chat(gw).status == 200
        gw2 = make_gateway(gateway_config(up.url, "    proxy: false\n"), env={"HTTP_PROXY": forward_proxy.url})
        assert chat(gw2).status == 200
        assert forward_proxy.seen == []


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_https_upstream_through_a_connect_tunnel(
    make_gateway: Callable[..., Gateway], forward_proxy: Any, tls_upstream: Any, transport: str
) -> None:
    provider = f"    transport: {transport}\n    tls: {{ca_file: {tls_upstream.ca_file}}}\n"
    gw = make_gateway(gateway_config(tls_upstream.url, provider), env={"HTTPS_PROXY": forward_proxy.url})
    assert chat(gw).status == 200
    assert forward_proxy.seen == [f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"]
