"""Bedrock failures → OpenAI errors (status, SDK exception class), before and during streams; bad input."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from bedrock_helpers import CLIENT_KEY, assert_no_secrets, config_yaml, post, sse_json, validate_error, wait_access
from fakes.bedrock import FakeBedrock

from proxy.testing import FakeServer, Gateway

HI = [{"role": "user", "content": "hi"}]


def _say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("name", "status", "exc"),
    [
        ("ValidationException", 400, openai.BadRequestError),
        ("AccessDeniedException", 403, openai.PermissionDeniedError),
        ("ResourceNotFoundException", 404, openai.NotFoundError),
        ("ModelTimeoutException", 408, openai.APIStatusError),
        ("ModelErrorException", 502, openai.InternalServerError),
        ("ThrottlingException", 429, openai.RateLimitError),
        ("ModelNotReadyException", 429, openai.RateLimitError),
        ("ServiceQuotaExceededException", 429, openai.RateLimitError),
        ("ServiceUnavailableException", 503, openai.InternalServerError),
        ("InternalServerException", 500, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_http_errors(client: openai.OpenAI, gw: Gateway, name: str, status: int, exc: type[Exception],
                     stream: bool) -> None:
    messages = [{"role": "user", "content": f"go [[error:{name}]]"}]
    with pytest.raises(exc) as info:
        if stream:
            list(client.chat.completions.create(model="claude", messages=messages, stream=True))
        else:
            client.chat.completions.create(model="claude", messages=messages)
    assert info.value.status_code == status  # type: ignore[attr-defined]
    validate_error(info.value.response.json())  # type: ignore[attr-defined]


def test_validation_message_is_kept_but_auth_details_are_not(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="fake ValidationException"):
        client.chat.completions.create(model="claude", messages=_say("[[error:ValidationException]]"))
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="claude", messages=_say("[[error:AccessDeniedException]]"))
    assert "fake AccessDeniedException" not in info.value.message


def test_wrong_secret_is_a_signature_error(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(fake.url), env={"BEDROCK_SECRET": "not-the-secret-value-123"})
    resp = post(gw.base_url, "/chat/completions", {"model": "claude", "messages": HI})
    assert resp.status == 403
    error = validate_error(resp.json)
    assert "credentials" in error["message"] and "InvalidSignatureException" in error["message"]
    assert "signature we calculated" not in error["message"]
    assert_no_secrets(gw.log_text, resp.body)
    assert "not-the-secret-value-123" not in gw.log_text + resp.body.decode()


@pytest.mark.parametrize(("frame", "status"), [("throttlingException", 429), ("validationException", 400),
                                               ("modelStreamErrorException", 502),
                                               ("internalServerException", 500),
                                               ("serviceUnavailableException", 503)])
def test_exception_frame_before_first_chunk(client: openai.OpenAI, frame: str, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        list(client.chat.completions.create(model="claude", stream=True,
                                            messages=[{"role": "user", "content": f"[[first-error:{frame}]]"}]))
    assert info.value.status_code == status


def test_exception_frame_mid_stream(gw: Gateway, client: openai.OpenAI) -> None:
    body = {"model": "claude", "stream": True, "messages": _say("[[stream-error:throttlingException]]")}
    resp = post(gw.base_url, "/chat/completions", body)
    assert resp.status == 200
    chunks, done, errors = sse_json(resp.body)
    assert not done and len(errors) == 1
    assert errors[0]["error"]["type"] == "rate_limit_error"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello from fake Bedrock!"
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(**body))


def test_first_frame_error_falls_back(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    routes = ("  - model: fallback\n    to:\n"
              "      - {provider: bedrock, model: us.anthropic.claude-3-7-sonnet-20250219-v1:0}\n"
              "      - {provider: bedrock, model: amazon.nova-lite-v1:0}\n")
    gw = make_gateway(config_yaml(fake.url, routes=routes))
    # Both targets fail before their first chunk: the core may fall back each time, then reports the last error.
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c, \
            pytest.raises(openai.RateLimitError):
        list(c.chat.completions.create(model="fallback", stream=True,
                                       messages=_say("[[first-error:throttlingException]]")))
    paths = [r.raw_path for r in fake.requests]
    assert paths == ["/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream",
                     "/model/amazon.nova-lite-v1%3A0/converse-stream"]  # the core tried the fallback
    assert wait_access(gw)[-1]["fallbacks"]


def test_unreachable_bedrock_is_503(make_gateway: Callable[..., Gateway]) -> None:
    with FakeServer(lambda: __import__("aiohttp").web.Application()) as dead:
        url = dead.url
    gw = make_gateway(config_yaml(url))
    resp = post(gw.base_url, "/chat/completions", {"model": "claude", "messages": HI})
    assert resp.status == 503
    validate_error(resp.json)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
         "messages[0].content[0]"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
    ],
)
def test_bad_input_is_400_before_bedrock(gw: Gateway, fake: FakeBedrock, body: dict, param: str) -> None:
    resp = post(gw.base_url, "/chat/completions", {"model": "claude", "messages": HI, **body})
    assert resp.status == 400, resp.body
    assert validate_error(resp.json)["param"] == param
    assert fake.requests == []


def test_reasoning_effort_refused_for_models_without_reasoning(gw: Gateway, fake: FakeBedrock) -> None:
    resp = post(gw.base_url, "/chat/completions", {"model": "nova", "messages": HI, "reasoning_effort": "low"})
    assert resp.status == 400 and validate_error(resp.json)["param"] == "reasoning_effort"


def test_json_schema_response_format(client: openai.OpenAI, fake: FakeBedrock) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.chat.completions.create(model="claude", messages=HI, response_format={
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema}})
    fmt = fake.requests[-1].json["outputConfig"]["textFormat"]
    assert fmt["type"] == "json_schema" and fmt["structure"]["jsonSchema"]["name"] == "thing"
    assert fmt["structure"]["jsonSchema"]["schema"] == '{"type":"object","properties":{"a":{"type":"string"}}}'


def test_completions_endpoint_not_served(gw: Gateway) -> None:
    resp = post(gw.base_url, "/completions", {"model": "claude", "prompt": "hi"})
    assert resp.status in (400, 404)
    validate_error(resp.json)


def test_client_leaving_closes_the_bedrock_stream(gw: Gateway, fake: FakeBedrock) -> None:
    """A client that hangs up mid-stream must not leave the upstream stream open."""
    import http.client
    import time
    from urllib.parse import urlsplit

    import orjson

    parts = urlsplit(gw.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    body = {"model": "claude", "stream": True, "messages": _say("[[slow:0.05]]")}
    conn.request("POST", parts.path + "/chat/completions", body=orjson.dumps(body),
                 headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read1(100)  # the stream has started
    resp.close()
    conn.close()
    deadline = time.monotonic() + 5
    while not fake.hung_up and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.hung_up == ["/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream"]
