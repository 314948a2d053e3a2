"""Routes with fallbacks: retryable upstream failures move to the next target; others do not."""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, access_records, config_yaml
from fakes.openai_upstream import Behaviour, FakeOpenAI, free_port
from openapi_check import validate_error

from proxy.testing import Gateway

CHAT = [{"role": "user", "content": "hi"}]


def _config(upstream: FakeOpenAI) -> str:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = (
        f"  dead: {{type: openai, base_url: \"{dead}\", api_key: x, connect_timeout: 2}}\n"
        f"  slow: {{type: openai, base_url: \"{upstream.url}/v1\", api_key: \"${{UPSTREAM_KEY}}\", "
        "read_timeout: 0.5}\n"
    )
    routes = (
        "  - {model: fb, to: [{provider: up, model: flaky}, {provider: up, model: gpt-4o}]}\n"
        "  - {model: fb-dead, to: [dead, {provider: up, model: gpt-4o}]}\n"
        "  - {model: dead-only, to: dead}\n"
        "  - {model: fb-slow, to: [{provider: slow, model: sleepy}, {provider: up, model: gpt-4o}]}\n"
        "  - {model: slow-only, to: {provider: slow, model: sleepy}}\n"
        "  - {model: all-bad, to: [{provider: up, model: flaky}, {provider: up, model: flaky2}]}\n"
        "  - {model: \"*\", to: up}\n"
    )
    return config_yaml(upstream.url, extra_providers=providers, routes=routes)


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(_config(upstream))


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("failure", [Behaviour(status=500), Behaviour(status=429, retry_after="1"),
                                     Behaviour(status=503)], ids=["500", "429", "503"])
@pytest.mark.parametrize("stream", [False, True])
def test_fallback_on_retryable_upstream_error(failure: Behaviour, stream: bool, client: openai.OpenAI,
                                              gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("flaky", failure)
    resp = client.chat.completions.with_raw_response.create(model="fb", messages=CHAT, stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    else:
        text = resp.parse().choices[0].message.content
    assert text == "Echo: hi"
    assert [r.json["model"] for r in upstream.requests] == ["flaky", "gpt-4o"]
    record = access_records(gw, 1)[-1]
    assert record["status"] == 200 and record["upstream_model"] == "gpt-4o"
    assert len(record["fallbacks"]) == 1 and str(failure.status) in record["fallbacks"][0]
    assert record["fallbacks"][0].startswith("up")


def test_fallback_on_connection_refused(client: openai.OpenAI, gw: Gateway, upstream: FakeOpenAI) -> None:
    completion = client.chat.completions.create(model="fb-dead", messages=CHAT)
    assert completion.choices[0].message.content == "Echo: hi"
    record = access_records(gw, 1)[-1]
    assert record["provider"] == "up" and len(record["fallbacks"]) == 1
    assert record["fallbacks"][0].startswith("dead")


def test_connection_refused_alone_is_5xx(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="dead-only", messages=CHAT)
    assert info.value.status_code in (502, 503)
    validate_error(orjson.loads(info.value.response.content))


@pytest.mark.parametrize("status", [400, 404, 422])
def test_no_fallback_on_client_error(status: int, client: openai.OpenAI, gw: Gateway,
                                     upstream: FakeOpenAI) -> None:
    upstream.on("flaky", Behaviour(status=status))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="fb", messages=CHAT)
    assert info.value.status_code == status
    assert [r.json["model"] for r in upstream.requests] == ["flaky"], "a bad request is bad everywhere"
    assert access_records(gw, 1)[-1]["fallbacks"] == []


def test_upstream_timeout_is_504(client: openai.OpenAI, gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("sleepy", Behaviour(delay=3))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow-only", messages=CHAT)
    assert time.monotonic() - started < 2.5, "read_timeout: 0.5 bounds the wait"
    assert info.value.status_code in (408, 504)
    error = validate_error(orjson.loads(info.value.response.content))
    assert error["code"] == "upstream_timeout"
    assert access_records(gw, 1)[-1]["status"] == info.value.status_code


def test_upstream_timeout_falls_back(client: openai.OpenAI, gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("sleepy", Behaviour(delay=3))
    completion = client.chat.completions.create(model="fb-slow", messages=CHAT)
    assert completion.choices[0].message.content == "Echo: hi"
    record = access_records(gw, 1)[-1]
    assert record["provider"] == "up" and record["fallbacks"][0].startswith("slow")


def test_every_target_failing_reports_the_last(client: openai.OpenAI, gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("flaky", Behaviour(status=500))
    upstream.on("flaky2", Behaviour(status=429, retry_after="9"))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="all-bad", messages=CHAT)
    assert info.value.response.headers.get("retry-after") == "9"
    assert [r.json["model"] for r in upstream.requests] == ["flaky", "flaky2"]
    record = access_records(gw, 1)[-1]
    assert record["status"] == 429 and len(record["fallbacks"]) == 1


def test_embeddings_fall_back_too(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    upstream.on("flaky", Behaviour(status=500))
    result = client.embeddings.create(model="fb", input="x", encoding_format="float")
    assert len(result.data[0].embedding) == 8
    assert [r.json["model"] for r in upstream.requests] == ["flaky", "gpt-4o"]
