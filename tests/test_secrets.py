"""Credentials stay on their side: client keys never go upstream, upstream keys never come back."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, UPSTREAM_KEY, access_records, config_yaml, post_json, raw
from fakes.openai_upstream import FakeOpenAI
from openapi_check import validate_error

from proxy.testing import Gateway

CHAT = [{"role": "user", "content": "hi"}]
HOP_BY_HOP = ("connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "x-hop-custom")


def _exercise(gw: Gateway) -> list[tuple[object, bytes]]:
    """One of everything, as the SDK sends it; returns each response's headers and body."""
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0,
                       default_headers={"api-key": CLIENT_KEY, "Cookie": f"session={CLIENT_KEY}"}) as client:
        responses = [
            client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT),
            client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x"),
            client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="x"),
            client.models.with_raw_response.list(),
            client.moderations.with_raw_response.create(input="x", model="omni-moderation-latest"),
        ]
        out = [(r.headers, r.content) for r in responses]
        with client.chat.completions.with_streaming_response.create(model="gpt-4o", messages=CHAT,
                                                                    stream=True) as stream:
            out.append((stream.headers, stream.read()))
    return out


def test_client_key_never_travels_upstream(gw: Gateway, upstream: FakeOpenAI) -> None:
    _exercise(gw)
    paths = {r.path for r in upstream.requests}
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/models", "/v1/moderations"} <= paths
    for recorded in upstream.requests:
        assert recorded.headers.getall("Authorization") == [f"Bearer {UPSTREAM_KEY}"]
        for name, value in recorded.headers.items():
            assert CLIENT_KEY not in value, f"client key leaked upstream in {name} on {recorded.path}"
        assert CLIENT_KEY.encode() not in recorded.body
        assert "cookie" not in {k.lower() for k in recorded.headers}
        assert "api-key" not in {k.lower() for k in recorded.headers}


def test_upstream_key_never_travels_back(gw: Gateway, upstream: FakeOpenAI) -> None:
    for headers, body in _exercise(gw):
        assert UPSTREAM_KEY not in str(headers)
        assert UPSTREAM_KEY.encode() not in body
    assert UPSTREAM_KEY not in gw.log_text
    assert CLIENT_KEY not in gw.log_text
    assert access_records(gw, 6)


def test_upstream_401_does_not_echo_the_key(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    """OpenAI quotes the rejected key in its 401 message; the gateway must not pass that on."""
    wrong = "sk-upstream-WRONG-ffffeeeeddddcccc"
    gw = make_gateway(config_yaml(upstream.url), env={"UPSTREAM_KEY": wrong})
    for payload, path in (({"model": "gpt-4o", "messages": CHAT}, "chat/completions"),
                          ({"model": "gpt-4o", "messages": CHAT, "stream": True}, "chat/completions"),
                          ({"model": "text-embedding-3-small", "input": "x"}, "embeddings"),
                          ({"model": "omni-moderation-latest", "input": "x"}, "moderations")):
        resp = post_json(f"{gw.base_url}/{path}", payload)
        assert resp.status == 401, (path, resp.status)
        validate_error(resp.json)
        # Not the client's key at fault: the code says the gateway's own credentials were refused.
        assert resp.json["error"]["code"] == "upstream_auth_failed"
        assert wrong.encode() not in resp.body and wrong[-8:].encode() not in resp.body, resp.body
        assert wrong not in str(resp.headers)
    # The upstream did quote it (so the test means something) ...
    assert upstream.requests and all(r.headers["Authorization"] == f"Bearer {wrong}" for r in upstream.requests)
    # ... and neither the gateway's log nor its model listing repeats it.
    assert raw("GET", f"{gw.base_url}/models").status == 200
    access_records(gw, 5)
    assert wrong not in gw.log_text and wrong[-8:] not in gw.log_text


def test_hop_by_hop_request_headers_not_forwarded(gw: Gateway, upstream: FakeOpenAI) -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT})
    headers = {
        "Connection": "keep-alive, X-Hop-Custom",
        "Keep-Alive": "timeout=5",
        "X-Hop-Custom": "1",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
        "Trailer": "Expires",
        "X-Forwarded-For": "10.1.2.3",
    }
    for path in ("chat/completions", "moderations"):
        assert raw("POST", f"{gw.base_url}/{path}", body, headers=headers).status == 200
        recorded = upstream.last(f"/v1/{path}")
        sent = {k.lower(): v for k, v in recorded.headers.items()}
        for name in HOP_BY_HOP:
            if name == "connection":
                assert "x-hop-custom" not in sent.get(name, "").lower()
            else:
                assert name not in sent, f"{name} forwarded on {path}"
        assert sent.get("host", "").endswith(upstream.url.rsplit(":", 1)[1]), "Host is the upstream's own"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_response_headers_not_leaked(stream: bool, gw: Gateway) -> None:
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT, "stream": stream})
    assert resp.status == 200
    names = {k.lower() for k in resp.headers}
    assert "x-request-id" in names
    assert "keep-alive" not in names and "proxy-authenticate" not in names
    assert resp.header("transfer-encoding") in (None, "chunked")


def test_healthz(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("GET", f"{gw.url}/healthz", key=None)
    assert resp.status == 200 and resp.json == {"status": "ok"}
    assert resp.header("x-request-id")
    assert upstream.requests == [], "health checks do not touch the upstream"
