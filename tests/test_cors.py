"""`server.cors`: browsers on allowed origins can call the gateway; off by default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from core_helpers import CLIENT_KEY, config_yaml, raw
from fakes.openai_upstream import FakeOpenAI

from proxy.config.load import load_config
from proxy.errors import ConfigError
from proxy.testing import Gateway

APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-lang"}
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def cors_gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(config_yaml(upstream.url, server=f"  cors: {{origins: [\"{APP}\"], max_age: 300}}\n"))


def test_off_by_default(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("OPTIONS", f"{gw.base_url}/chat/completions", headers=PREFLIGHT, key=None)
    assert resp.status == 405 and resp.header("Access-Control-Allow-Origin") is None
    ok = raw("GET", f"{gw.base_url}/models", headers={"Origin": APP})
    assert ok.status == 200 and ok.header("Access-Control-Allow-Origin") is None
    assert all(r.method != "OPTIONS" for r in upstream.requests)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/files/file-1", "/v1/responses",
                                  "/openai/nothing"])
def test_preflight_is_answered_without_a_key_and_never_forwarded(
    path: str, cors_gw: Gateway, upstream: FakeOpenAI
) -> None:
    resp = raw("OPTIONS", cors_gw.url + path, headers=PREFLIGHT, key=None)
    assert resp.status == 204, resp.body
    assert resp.header("Access-Control-Allow-Origin") == APP
    assert resp.header("Access-Control-Allow-Methods") == "GET, POST, DELETE, OPTIONS"
    assert resp.header("Access-Control-Allow-Headers") == PREFLIGHT["Access-Control-Request-Headers"]
    assert resp.header("Access-Control-Max-Age") == "300"
    assert "Origin" in (resp.header("Vary") or "")
    assert resp.header("Access-Control-Allow-Credentials") is None
    assert upstream.requests == []


def test_preflight_from_another_origin_is_refused(cors_gw: Gateway) -> None:
    headers = {**PREFLIGHT, "Origin": "https://evil.example"}
    resp = raw("OPTIONS", f"{cors_gw.base_url}/chat/completions", headers=headers, key=None)
    assert resp.status == 403 and resp.json["error"]["code"] == "cors_origin_not_allowed"
    assert resp.header("Access-Control-Allow-Origin") is None


def test_answers_to_an_allowed_origin_are_readable(cors_gw: Gateway) -> None:
    with openai.OpenAI(base_url=cors_gw.base_url, api_key=CLIENT_KEY, max_retries=0,
                       default_headers={"Origin": APP}) as client:
        resp = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        assert resp.headers["access-control-allow-origin"] == APP
        assert "x-request-id" in resp.headers["access-control-expose-headers"]
        assert resp.parse().choices
        with client.chat.completions.with_streaming_response.create(model="gpt-4o", messages=HELLO,
                                                                    stream=True) as stream:
            assert stream.headers["access-control-allow-origin"] == APP
            assert list(stream.iter_lines())
    # Errors too, so the page can show them; a key is still required.
    denied = raw("POST", f"{cors_gw.base_url}/chat/completions", b"{}", headers={"Origin": APP}, key=None)
    assert denied.status == 401 and denied.header("Access-Control-Allow-Origin") == APP
    other = raw("GET", f"{cors_gw.base_url}/models", headers={"Origin": "https://evil.example"})
    assert other.status == 200 and other.header("Access-Control-Allow-Origin") is None


def test_any_origin_and_credentials(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, server="  cors: {origins: [\"*\"]}\n"))
    resp = raw("OPTIONS", f"{gw.base_url}/models", headers={**PREFLIGHT, "Origin": "https://any.example"}, key=None)
    assert resp.status == 204 and resp.header("Access-Control-Allow-Origin") == "*"
    server = f"  cors: {{origins: [\"{APP}\"], allow_credentials: true}}\n"
    creds = make_gateway(config_yaml(upstream.url, server=server))
    resp = raw("GET", f"{creds.base_url}/models", headers={"Origin": APP})
    assert resp.header("Access-Control-Allow-Origin") == APP
    assert resp.header("Access-Control-Allow-Credentials") == "true"


@pytest.mark.parametrize(("cors", "problem"), [
    ('{origins: ["https://app.example.com/path"]}', "server.cors.origins: expected origins like"),
    ('{origins: ["app.example.com"]}', "server.cors.origins: expected origins like"),
    ('{origins: ["*"], allow_credentials: true}', "server.cors.allow_credentials: not with origins"),
    ('{origins: []}', "server.cors.origins"),
    ('{origin: ["https://a.example"]}', "server.cors.origins: required"),
])
def test_cors_config_errors(cors: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"server:\n  cors: {cors}\n")
    with pytest.raises(ConfigError, match=problem):
        load_config(path, {})
