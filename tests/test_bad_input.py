"""Malformed input gets a 400 (never a 500 or a traceback), and never writes a client's key to the log."""

from __future__ import annotations

import gzip
import socket
import zlib
from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, config_yaml, raw
from fakes.openai_upstream import FakeOpenAI
from openapi_check import validate

from proxy.testing import Gateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _exchange(gw: Gateway, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes; everything the gateway answers until it closes (or falls silent)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionError):
            pass
        return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


# ---------------------------------------------------------------- the HTTP layer (S9, S15, S16)


def test_a_malformed_authorization_header_is_not_logged(gw: Gateway, upstream: FakeOpenAI) -> None:
    """A key read from a CRLF file (`Bearer key\\r`) used to land in stderr with aiohttp's traceback."""
    request = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\r\n\r\n"
    answer = _exchange(gw, request.encode())
    assert _status(answer) == 400, answer
    body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "bad_http_request"
    assert CLIENT_KEY.encode() not in answer
    assert CLIENT_KEY not in gw.log_text and "Traceback" not in gw.log_text
    assert upstream.requests == []


def test_malformed_requests_do_not_amplify_the_log(gw: Gateway) -> None:
    """Each bad request used to write a ~560 B traceback; now one short line stands for many."""
    before = len(gw.log_text)
    for i in range(50):
        _exchange(gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header %d: y\r\n\r\n" % i)
    written = gw.log_text[before:]
    assert "Traceback" not in written
    assert written.count("malformed HTTP request") <= 2, written
    assert len(written) < 1000, written


def test_http_1_0_with_transfer_encoding_is_refused_and_closed(gw: Gateway, upstream: FakeOpenAI) -> None:
    body = orjson.dumps(CHAT)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = (b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
               b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    answer = _exchange(gw, request + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 400, answer
    assert b"\"status\":\"ok\"" not in answer, answer  # closed: the pipelined request was not served
    assert upstream.requests == []


# ---------------------------------------------------------------- bodies and keys (S12, S13)


@pytest.mark.parametrize("header", ["Authorization", "api-key"])
def test_a_key_that_is_not_utf8_is_401(header: str, gw: Gateway) -> None:
    value = (b"Bearer " if header == "Authorization" else b"") + b"sk-\xff\xfe-not-utf8"
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header.encode() + b": " + value
    answer = _exchange(gw, request + b"\r\n\r\n")
    assert _status(answer) == 401, answer
    assert "Traceback" not in gw.log_text


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_a_compressed_body_is_read(encoding: str, compress: object, gw: Gateway, upstream: FakeOpenAI) -> None:
    body = compress(orjson.dumps(CHAT))  # type: ignore[operator]
    resp = raw("POST", f"{gw.base_url}/chat/completions", body, headers={"Content-Encoding": encoding})
    assert resp.status == 200, resp.body
    assert orjson.loads(upstream.last().body) == CHAT


def test_a_compressed_body_is_limited_by_its_inflated_size(
    upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(config_yaml(upstream.url, server="  max_body_size: 64KiB\n"))
    bomb = gzip.compress(orjson.dumps({**CHAT, "pad": "a" * 10_000_000}))  # ~10 kB on the wire
    resp = raw("POST", f"{gw.base_url}/chat/completions", bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status == 413
    broken = raw("POST", f"{gw.base_url}/chat/completions", b"\x1f\x8b not gzip at all",
                 headers={"Content-Encoding": "gzip"})
    assert broken.status == 400 and broken.json["error"]["code"] == "invalid_body"
    assert upstream.requests == []


@pytest.mark.parametrize("depth", [255, 600, 1024])
def test_json_nested_deeper_than_can_be_rewritten_is_400(depth: int, upstream: FakeOpenAI,
                                                         make_gateway: Callable[..., Gateway]) -> None:
    routes = "  - {model: alias, to: {provider: up, model: gpt-4o}}\n  - {model: \"*\", to: up}\n"
    gw = make_gateway(config_yaml(upstream.url, routes=routes))
    nested = b"[" * depth + b"]" * depth
    body = b'{"model": "alias", "messages": [{"role": "user", "content": "x"}], "deep": ' + nested + b"}"
    resp = raw("POST", f"{gw.base_url}/chat/completions", body)  # the route renames the model: a rewrite
    assert resp.status == 400, resp.body
    assert resp.json["error"]["code"] == "invalid_json"
    assert "Traceback" not in gw.log_text


def test_duplicate_model_keys_send_only_the_checked_one(gw: Gateway, upstream: FakeOpenAI) -> None:
    """A key limited to gpt-4o* is checked on the last `model`; an upstream keeping the first ran o3."""
    body = b'{"model": "o3", "messages": [{"role": "user", "content": "x"}], "model": "gpt-4o"}'
    resp = raw("POST", f"{gw.base_url}/chat/completions", body, key=LIMITED_KEY)
    assert resp.status == 200, resp.body
    sent = upstream.last().body
    assert sent.count(b'"model"') == 1 and orjson.loads(sent)["model"] == "gpt-4o"
    moderation = b'{"model": "o3", "input": "x", "model": "gpt-4o-mini"}'
    assert raw("POST", f"{gw.base_url}/moderations", moderation, key=LIMITED_KEY).status == 200
    assert upstream.last().body.count(b'"model"') == 1


def test_the_sdk_is_unaffected(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
