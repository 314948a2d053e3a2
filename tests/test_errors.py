"""Every failure is OpenAI-shaped: the SDK's exception classes, and raw HTTP for bad input."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, access_records, config_yaml, post_json, raw
from fakes.openai_upstream import Behaviour, FakeOpenAI
from openapi_check import validate_error

from proxy.hookspecs import hookimpl
from proxy.testing import Gateway

CHAT = [{"role": "user", "content": "hi"}]


def _error_of(exc: openai.APIStatusError) -> dict:
    assert exc.response.headers.get("x-request-id")
    return validate_error(orjson.loads(exc.response.content))


# ------------------------------------------------------------------ as the SDK sees them


@pytest.mark.parametrize(
    ("status", "exc_class"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_upstream_errors_keep_their_meaning(
    status: int, exc_class: type[openai.APIStatusError], client: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    upstream.on("gpt-4o", Behaviour(status=status, retry_after="7" if status == 429 else None,
                                    error_param="messages" if status == 400 else None))
    with pytest.raises(exc_class) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert info.value.status_code == status
    error = _error_of(info.value)
    if status == 400:
        assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    if status == 404:
        assert error["code"] == "model_not_found"
    if status == 429:
        assert info.value.response.headers.get("retry-after") == "7"
        assert error["code"] == "rate_limit_exceeded"


def test_upstream_non_json_error_page_is_not_relayed(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1>nginx internal 10.0.0.7</body></html>"
    upstream.on("gpt-4o", Behaviour(status=502, body=page))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert info.value.status_code == 502
    assert info.value.response.headers["content-type"].startswith("application/json")
    _error_of(info.value)
    assert b"nginx" not in info.value.response.content


def test_wrong_client_key_is_authentication_error(gw: Gateway, upstream: FakeOpenAI) -> None:
    with (openai.OpenAI(base_url=gw.base_url, api_key="sk-not-a-client", max_retries=0) as bad,
          pytest.raises(openai.AuthenticationError) as info):
        bad.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert _error_of(info.value)["code"] == "invalid_api_key"
    assert "sk-not-a-client" not in info.value.response.text
    assert upstream.requests == [], "a rejected client never reaches the upstream"


def test_model_not_allowed_is_permission_denied(gw: Gateway, upstream: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=gw.base_url, api_key=LIMITED_KEY, max_retries=0) as limited:
        assert limited.chat.completions.create(model="gpt-4o-mini", messages=CHAT).choices
        with pytest.raises(openai.PermissionDeniedError) as info:
            limited.chat.completions.create(model="gpt-3.5-turbo-instruct", messages=CHAT)
        assert _error_of(info.value)["param"] == "model"
        with pytest.raises(openai.PermissionDeniedError):
            limited.embeddings.create(model="text-embedding-3-small", input="x")
    assert [r.json["model"] for r in upstream.requests] == ["gpt-4o-mini"]


def test_unrouted_model_is_not_found(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, routes="  - {model: gpt-4o, to: up}\n"))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="claude-9", messages=CHAT)
        assert _error_of(info.value)["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("claude-9")
    assert upstream.requests == []


async def test_errors_async_sdk(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(status=500))
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as aclient:
        with pytest.raises(openai.InternalServerError):
            await aclient.chat.completions.create(model="gpt-4o", messages=CHAT)
        with pytest.raises(openai.InternalServerError):
            await aclient.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)


def test_stream_request_failing_before_start_is_plain_error(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(status=429, retry_after="3"))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
    assert info.value.response.headers["content-type"].startswith("application/json")
    _error_of(info.value)


# ------------------------------------------------------------------ raw HTTP: bad input


def _check_error(resp, status: int, *, param: str | None = "any", code: str | None = "any") -> dict:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.header("content-type").startswith("application/json")
    assert resp.header("x-request-id")
    error = validate_error(resp.json)
    if param != "any":
        assert error["param"] == param, error
    if code != "any":
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-4o", "messages": [', None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-4o", "messages": "hello"}', "messages"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": []}', "messages"),
        (b'{"model": "gpt-4o", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}', "max_tokens"),
    ],
    ids=["truncated", "array", "empty", "model-number", "messages-string", "stream-string", "no-model",
         "no-messages", "messages-empty", "message-not-object", "max-tokens-string"],
)
def test_bad_chat_bodies_are_400(body: bytes, param: str | None, gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.base_url}/chat/completions", body)
    error = _check_error(resp, 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert upstream.requests == [], "bad input is refused before it costs an upstream call"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("embeddings", {"model": "text-embedding-3-small"}, "input"),
        ("embeddings", {"model": "text-embedding-3-small", "input": 3}, "input"),
        ("embeddings", {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
         "encoding_format"),
        ("completions", {"model": "gpt-3.5-turbo-instruct", "prompt": {"a": 1}}, "prompt"),
    ],
)
def test_bad_embeddings_and_completions_are_400(path: str, body: dict, param: str, gw: Gateway) -> None:
    _check_error(post_json(f"{gw.base_url}/{path}", body), 400, param=param)


def test_body_over_limit_is_413(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, server="  max_body_size: 2KiB\n"))
    big = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 4000}]})
    _check_error(raw("POST", f"{gw.base_url}/chat/completions", big), 413)
    # Without a Content-Length (chunked upload) the limit holds too.
    chunked = raw("POST", f"{gw.base_url}/chat/completions", iter([big[:1000], big[1000:]]))  # type: ignore[arg-type]
    _check_error(chunked, 413)
    # And on pass-through routes.
    _check_error(raw("POST", f"{gw.base_url}/moderations", big), 413)
    assert upstream.requests == []
    small = orjson.dumps({"model": "gpt-4o", "messages": CHAT})
    assert raw("POST", f"{gw.base_url}/chat/completions", small).status == 200


@pytest.mark.parametrize(
    ("headers", "key", "code"),
    [({}, None, "missing_api_key"), ({}, "sk-wrong", "invalid_api_key"),
     ({"Authorization": "Basic Zm9vOmJhcg=="}, None, "missing_api_key")],
)
def test_missing_or_wrong_key_is_401(headers: dict, key: str | None, code: str, gw: Gateway,
                                     upstream: FakeOpenAI) -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT})
    for method, path, payload in (("POST", "chat/completions", body), ("GET", "models", None),
                                  ("GET", "models/gpt-4o", None), ("POST", "moderations", body)):
        resp = raw(method, f"{gw.base_url}/{path}", payload, headers=headers, key=key)
        _check_error(resp, 401, code=code)
    assert upstream.requests == []


def test_azure_style_api_key_header_is_accepted(gw: Gateway) -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT})
    assert raw("POST", f"{gw.base_url}/chat/completions", body, headers={"api-key": CLIENT_KEY}, key=None).status \
        == 200


def test_models_listing_only_shows_allowed_models(gw: Gateway) -> None:
    resp = raw("GET", f"{gw.base_url}/models", key=LIMITED_KEY)
    assert resp.status == 200
    assert sorted(m["id"] for m in resp.json["data"]) == ["gpt-4o", "gpt-4o-mini"]
    assert raw("GET", f"{gw.base_url}/models/gpt-4o", key=LIMITED_KEY).status == 200
    _check_error(raw("GET", f"{gw.base_url}/models/real-model", key=LIMITED_KEY), 403)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("POST", "/v2/chat/completions", 404), ("GET", "/v1/chat/completions", 405),
     ("PUT", "/v1/embeddings", 405), ("POST", "/v1/models", 405), ("DELETE", "/healthz", 405)],
)
def test_unknown_path_and_wrong_method(method: str, path: str, status: int, gw: Gateway,
                                       upstream: FakeOpenAI) -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT}) if method in ("POST", "PUT") else None
    _check_error(raw(method, gw.url + path, body), status)
    assert upstream.requests == []


def test_unknown_v1_path_upstream_404_is_openai_shaped(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.base_url}/no/such/thing", orjson.dumps({"model": "gpt-4o"}))
    _check_error(resp, 404)


def test_request_id_is_the_clients_own(gw: Gateway) -> None:
    ok = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT},
                   headers={"x-request-id": "client-req-42"})
    assert ok.status == 200 and ok.header("x-request-id") == "client-req-42"
    bad = raw("POST", f"{gw.base_url}/chat/completions", b"{", headers={"x-request-id": "client-req-43"})
    assert bad.status == 400 and bad.header("x-request-id") == "client-req-43"
    unauth = raw("GET", f"{gw.base_url}/models", key=None, headers={"X-Request-ID": "client-req-44"})
    assert unauth.status == 401 and unauth.header("x-request-id") == "client-req-44"
    notfound = raw("GET", gw.url + "/nope", headers={"x-request-id": "client-req-45"})
    assert notfound.status == 404 and notfound.header("x-request-id") == "client-req-45"
    assert [r["request_id"] for r in access_records(gw, 3) if r["request_id"].startswith("client-req")][:3] == [
        "client-req-42", "client-req-43", "client-req-44"]


def test_request_id_generated_when_absent_or_insane(gw: Gateway) -> None:
    ids = set()
    for headers in ({}, {"x-request-id": "bad id\twith spaces" + "x" * 200}):
        resp = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT}, headers=headers)
        rid = resp.header("x-request-id")
        assert rid and " " not in rid and len(rid) <= 128
        ids.add(rid)
    assert len(ids) == 2
    assert raw("GET", gw.url + "/healthz", key=None).header("x-request-id")


def test_azure_style_deployment_path(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
               orjson.dumps({"messages": CHAT}), headers={"api-key": CLIENT_KEY}, key=None)
    assert resp.status == 200, resp.body
    recorded = upstream.last("/v1/chat/completions")
    assert recorded.json["model"] == "gpt-4o"
    assert recorded.query == "", "Azure's api-version is not an OpenAI parameter"


class BrokenPlugin:
    """A plugin with a bug: its hook raises something that is not a GatewayError."""

    @staticmethod
    @hookimpl
    def rewrite_request(call: object) -> None:
        raise RuntimeError("secret-internal-detail")


def test_a_plugin_bug_is_an_openai_shaped_500(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url), extra_plugins=[("broken", BrokenPlugin())])
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT})
    error = _check_error(resp, 500)
    assert error["code"] == "internal_error"
    assert "secret-internal-detail" not in resp.body.decode()
    assert "RuntimeError" in gw.log_text  # the traceback is logged for the operator
    assert access_records(gw, 1)[-1]["status"] == 500
    assert upstream.requests == []


def test_a_header_http_cannot_carry_is_a_400_not_a_crash(upstream: FakeOpenAI,
                                                         make_gateway: Callable[..., Gateway]) -> None:
    bad = f'  bad: {{type: openai, base_url: {upstream.url}/v1, headers: {{X-Team: "a\\nInjected: yes"}}}}\n'
    gw = make_gateway(config_yaml(upstream.url, extra_providers=bad, routes="  - {model: \"*\", to: bad}\n"))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT})
    error = _check_error(resp, 400)
    assert "cannot be forwarded" in error["message"]
    assert upstream.requests == []
