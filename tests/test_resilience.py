"""Retries, circuit breakers and routing strategies (DESIGN §4 "Resilience")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import openai
import pytest
from core_helpers import CLIENT_KEY, access_records, post_json
from fakes.openai_upstream import Behaviour, FakeOpenAI
from limits_helpers import CHAT, Capture, config
from openapi_check import validate_error

from proxy.testing import Gateway


def _provider(upstream: FakeOpenAI, name: str, extra: str = "") -> str:
    base = f"type: openai, base_url: \"{upstream.url}/v1\", api_key: \"${{UPSTREAM_KEY}}\""
    return f"  {name}: {{{base}{', ' + extra if extra else ''}}}\n"


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def make(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], capture: Capture) -> Callable[..., Gateway]:
    def build(providers: str, routes: str) -> Gateway:
        return make_gateway(config(upstream.url, providers=providers, routes=routes), extra_plugins=[("cap", capture)])

    return build


@pytest.fixture
def client() -> Iterator[Callable[[Gateway], openai.OpenAI]]:
    made: list[openai.OpenAI] = []

    def make(gw: Gateway) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _models(upstream: FakeOpenAI) -> list[str]:
    return [r.json["model"] for r in upstream.requests]


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("stream", [False, True])
def test_500_500_200_is_a_200_after_three_attempts(stream: bool, upstream: FakeOpenAI, make: Callable[..., Gateway],
                                                     capture: Capture, client: Callable[..., openai.OpenAI]) -> None:
    gw = make(_provider(upstream, "flaky", "retries: {attempts: 3, backoff: 0.01, max_backoff: 1}"),
              "  - {model: \"*\", to: {provider: flaky, model: m}}\n")
    upstream.script("m", [Behaviour(status=500), Behaviour(status=500)])
    resp = client(gw).chat.completions.create(model="x", messages=CHAT, stream=stream)
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in resp if c.choices) == "Echo: hello there"
    else:
        assert resp.choices[0].message.content == "Echo: hello there"
    assert _models(upstream) == ["m", "m", "m"]
    call = capture.wait(1)[0]
    assert [(a.provider, a.retry, a.status) for a in call.attempts] == [("flaky", 0, 500), ("flaky", 1, 500),
                                                                        ("flaky", 2, 200)]
    assert [a.error_type for a in call.attempts] == ["upstream_error", "upstream_error", None]
    assert call.fallbacks == [] and call.status == 200


def test_retry_after_is_waited(upstream: FakeOpenAI, make: Callable[..., Gateway],
                               client: Callable[..., openai.OpenAI]) -> None:
    gw = make(_provider(upstream, "up2", "retries: {attempts: 2, backoff: 0.01, max_backoff: 5}"),
              "  - {model: \"*\", to: {provider: up2, model: m}}\n")
    upstream.script("m", [Behaviour(status=429, retry_after="1")])
    started = time.monotonic()
    assert client(gw).chat.completions.create(model="x", messages=CHAT).choices
    assert time.monotonic() - started >= 0.95, "the upstream's Retry-After was not honoured"
    assert _models(upstream) == ["m", "m"]


def test_a_retry_after_beyond_max_backoff_moves_to_the_next_target(
    upstream: FakeOpenAI, make: Callable[..., Gateway], capture: Capture, client: Callable[..., openai.OpenAI]
) -> None:
    gw = make(_provider(upstream, "busy", "retries: {attempts: 3, backoff: 0.01, max_backoff: 2}"),
              "  - {model: \"*\", to: [{provider: busy, model: m}, {provider: up, model: other}]}\n")
    upstream.script("m", [Behaviour(status=429, retry_after="30")])
    started = time.monotonic()
    assert client(gw).chat.completions.create(model="x", messages=CHAT).choices
    assert time.monotonic() - started < 1.5
    assert _models(upstream) == ["m", "other"]
    assert capture.wait(1)[0].fallbacks == ["busy: HTTP 429 rate_limit_exceeded"]


def test_exhausted_retries_fall_back_and_client_errors_are_not_retried(
    upstream: FakeOpenAI, make: Callable[..., Gateway], client: Callable[..., openai.OpenAI]
) -> None:
    gw = make(_provider(upstream, "flaky", "retries: {attempts: 2, backoff: 0.01}"),
              "  - {model: fb, to: [{provider: flaky, model: m}, {provider: up, model: other}]}\n"
              "  - {model: \"*\", to: {provider: flaky, model: bad}}\n")
    upstream.on("m", Behaviour(status=503))
    assert client(gw).chat.completions.create(model="fb", messages=CHAT).choices
    assert _models(upstream) == ["m", "m", "other"]
    upstream.on("bad", Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        client(gw).chat.completions.create(model="x", messages=CHAT)
    assert _models(upstream)[3:] == ["bad"]


def test_no_retry_once_a_byte_reached_the_client(upstream: FakeOpenAI, make: Callable[..., Gateway]) -> None:
    gw = make(_provider(upstream, "flaky", "retries: {attempts: 3, backoff: 0.01}"),
              "  - {model: \"*\", to: {provider: flaky, model: m}}\n")
    upstream.on("m", Behaviour(fail_after_chunks=3))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "x", "messages": CHAT, "stream": True})
    assert resp.status == 200 and b"event: error" in resp.body
    assert _models(upstream) == ["m"]


# ---------------------------------------------------------------- breaker


def test_breaker_opens_skips_probes_and_closes(
    upstream: FakeOpenAI, make: Callable[..., Gateway], capture: Capture, client: Callable[..., openai.OpenAI]
) -> None:
    gw = make(_provider(upstream, "sick", "breaker: {failures: 2, cooldown: 0.5}"),
              "  - {model: \"*\", to: [{provider: sick, model: s}, {provider: up, model: ok}]}\n")
    sdk = client(gw)

    def ask() -> list[str]:
        before = len(upstream.requests)
        assert sdk.chat.completions.create(model="x", messages=CHAT).choices
        return _models(upstream)[before:]

    upstream.on("s", Behaviour(status=500))
    assert ask() == ["s", "ok"] and not gw.runtime.breaker_open("sick")
    assert ask() == ["s", "ok"] and gw.runtime.breaker_open("sick")  # open after 2 failures in a row
    assert ask() == ["ok"]  # skipped while open
    assert capture.wait(3)[2].fallbacks == ["sick: skipped, circuit open"]
    time.sleep(0.6)
    assert gw.runtime.breaker_open("sick")  # half-open: the next request is the probe
    assert ask() == ["s", "ok"]  # the probe fails: open again
    assert ask() == ["ok"]
    upstream.on("s", Behaviour())
    time.sleep(0.6)
    assert ask() == ["s"] and not gw.runtime.breaker_open("sick")  # the probe succeeds: closed
    assert ask() == ["s"]
    assert "circuit open" in gw.log_text and "circuit closed" in gw.log_text


def test_half_open_sends_one_probe_at_a_time(upstream: FakeOpenAI, make: Callable[..., Gateway],
                                             client: Callable[..., openai.OpenAI]) -> None:
    gw = make(_provider(upstream, "sick", "breaker: {failures: 1, cooldown: 0.3}"),
              "  - {model: \"*\", to: [{provider: sick, model: s}, {provider: up, model: ok}]}\n")
    sdk = client(gw)
    upstream.on("s", Behaviour(status=500))
    sdk.chat.completions.create(model="x", messages=CHAT)
    assert gw.runtime.breaker_open("sick")
    time.sleep(0.4)
    gate = threading.Event()
    upstream.on("s", Behaviour(gate=gate))
    probe = threading.Thread(target=lambda: sdk.chat.completions.create(model="x", messages=CHAT))
    probe.start()
    try:
        deadline = time.monotonic() + 10
        while _models(upstream).count("s") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = len(upstream.requests)
        sdk.chat.completions.create(model="x", messages=CHAT)  # while the probe is out: not a second probe
        assert _models(upstream)[before:] == ["ok"]
    finally:
        gate.set()
        probe.join(10)
    assert not gw.runtime.breaker_open("sick")


def test_every_breaker_open_is_a_503(upstream: FakeOpenAI, make: Callable[..., Gateway],
                                     client: Callable[..., openai.OpenAI]) -> None:
    gw = make(_provider(upstream, "sick", "breaker: {failures: 1, cooldown: 30}"),
              "  - {model: \"*\", to: {provider: sick, model: s}}\n")
    upstream.on("s", Behaviour(status=500))
    with pytest.raises(openai.InternalServerError):
        client(gw).chat.completions.create(model="x", messages=CHAT)
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="x", messages=CHAT)
    assert info.value.status_code == 503
    assert validate_error(info.value.response.json())["code"] == "circuit_open"
    assert len(upstream.requests) == 1


# ---------------------------------------------------------------- strategies


def test_weighted_shares(upstream: FakeOpenAI, make: Callable[..., Gateway]) -> None:
    gw = make(_provider(upstream, "east") + _provider(upstream, "west"),
              "  - model: \"*\"\n    strategy: weighted\n"
              "    to: [{provider: east, model: e, weight: 3}, {provider: west, model: w, weight: 1}]\n")
    for _ in range(400):
        assert post_json(f"{gw.base_url}/chat/completions", {"model": "x", "messages": CHAT}).status == 200
    share = _models(upstream).count("e") / 400
    assert abs(share - 0.75) <= 0.03


def test_weighted_keeps_the_other_targets_as_fallbacks(upstream: FakeOpenAI, make: Callable[..., Gateway]) -> None:
    gw = make(_provider(upstream, "east") + _provider(upstream, "west"),
              "  - model: \"*\"\n    strategy: weighted\n"
              "    to: [{provider: east, model: e, weight: 1}, {provider: west, model: w, weight: 1}]\n")
    upstream.on("e", Behaviour(status=500))
    for _ in range(4):
        assert post_json(f"{gw.base_url}/chat/completions", {"model": "x", "messages": CHAT}).status == 200
    assert _models(upstream).count("w") == 4  # picked first twice, a fallback the other two times
    assert _models(upstream).count("e") == 2


def test_least_busy_picks_the_target_with_fewest_requests_in_flight(
    upstream: FakeOpenAI, make: Callable[..., Gateway]
) -> None:
    gw = make(_provider(upstream, "east") + _provider(upstream, "west"),
              "  - model: \"*\"\n    strategy: least_busy\n"
              "    to: [{provider: east, model: e}, {provider: west, model: w}]\n")
    gate = threading.Event()
    upstream.on("e", Behaviour(gate=gate))
    held = threading.Thread(target=post_json, args=(f"{gw.base_url}/chat/completions",
                                                    {"model": "x", "messages": CHAT}))
    held.start()
    try:
        deadline = time.monotonic() + 10
        while not upstream.requests:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(3):
            assert post_json(f"{gw.base_url}/chat/completions", {"model": "x", "messages": CHAT}).status == 200
        assert _models(upstream) == ["e", "w", "w", "w"]
    finally:
        gate.set()
        held.join(10)
    access_records(gw, 4)
    assert gw.runtime.health.get("east").inflight == 0 and gw.runtime.health.get("west").inflight == 0
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "x", "messages": CHAT}).status == 200
    assert _models(upstream)[-1] == "e"  # idle again: the first listed
