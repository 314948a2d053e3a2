"""Limits and budgets through the gateway: the 429s, headers, cost and settlement.

Every test runs on the in-process store and on a real Redis: the two implement one contract.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, access_record, access_records, post_json
from fakes.openai_upstream import Behaviour, FakeOpenAI
from limits_helpers import CHAT, DURATION, Capture, config, estimate, flush, snapshot
from openapi_check import validate_error

from proxy.testing import Gateway, RedisServer


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    if request.param == "memory":
        return ""
    flush(redis_server.url)
    return f"redis: '{redis_server.url}'"


@pytest.fixture
def sdk() -> Callable[..., openai.OpenAI]:
    clients: list[openai.OpenAI] = []

    def make(gw: Gateway, key: str = CLIENT_KEY, retries: int = 0) -> openai.OpenAI:
        c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=retries, timeout=20)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def _rate_limit_error(exc: openai.RateLimitError, code: str) -> dict[str, object]:
    assert exc.status_code == 429
    error = validate_error(orjson.loads(exc.response.content))
    assert error["type"] == "rate_limit_error" and error["code"] == code
    return error


# ---------------------------------------------------------------- rpm, tpm: 429s and headers


def test_key_rpm_admits_the_limit_and_answers_openai_429s(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    capture = Capture()
    gw = make_gateway(config(upstream.url, state=state, key_a="limits: {rpm: 3}"), extra_plugins=[("cap", capture)])
    client = sdk(gw)
    remaining = []
    for _ in range(3):
        resp = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
        assert resp.headers["x-ratelimit-limit-requests"] == "3"
        assert DURATION.match(resp.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in resp.headers  # no tpm on this key
        remaining.append(resp.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    error = _rate_limit_error(info.value, "rate_limit_exceeded")
    assert "team-a" in str(error["message"]) and "per minute" in str(error["message"])
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 61
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(headers["x-ratelimit-reset-requests"])
    assert len(upstream.requests) == 3
    record = access_records(gw, 4)[-1]
    assert record["status"] == 429 and record["error"] == "rate_limit_exceeded"
    assert capture.wait(4)[-1].rejections == [("key", "requests")]
    assert capture.calls[-1].error_type == "limit_requests"
    # Another key is not limited by team-a's window.
    assert sdk(gw, LIMITED_KEY).chat.completions.create(model="gpt-4o", messages=CHAT).choices


def test_key_tpm_reserves_the_estimate_and_settles_to_real_usage(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    body = {"model": "gpt-4o", "messages": CHAT, "max_tokens": 40}
    each = estimate(body)
    gw = make_gateway(config(upstream.url, state=state, key_a=f"limits: {{tpm: {2 * each + each // 2}}}"))
    first = post_json(f"{gw.base_url}/chat/completions", body)
    assert first.status == 200
    assert first.header("x-ratelimit-limit-tokens") == str(2 * each + each // 2)
    assert first.header("x-ratelimit-remaining-tokens") == str(each + each // 2)  # the reservation, before usage
    assert DURATION.match(first.header("x-ratelimit-reset-tokens") or "")
    real = first.json["usage"]["total_tokens"]
    access_records(gw, 1)  # settled by the time the record is written
    assert snapshot(gw, "k:team-a")["tokens"] == real
    # Settled to the real usage (far below the estimate): two more reservations fit, held
    # in flight upstream; a third does not, until they settle.
    gate = threading.Event()
    upstream.on("held", Behaviour(gate=gate))
    held = {**body, "model": "held"}
    statuses: list[int] = []

    def send_held() -> None:
        statuses.append(post_json(f"{gw.base_url}/chat/completions", held).status)

    threads = [threading.Thread(target=send_held) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while len(upstream.requests) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = post_json(f"{gw.base_url}/chat/completions", body)
    finally:
        gate.set()
        for t in threads:
            t.join(10)
    assert refused.status == 429 and statuses == [200, 200], [r.json for r in upstream.requests]
    assert refused.json["error"]["code"] == "rate_limit_exceeded" and refused.header("retry-after")
    assert refused.header("x-ratelimit-limit-tokens") and "tokens" in refused.json["error"]["message"]
    access_records(gw, 4)
    assert snapshot(gw, "k:team-a")["tokens"] == 3 * real
    assert post_json(f"{gw.base_url}/chat/completions", body).status == 200


def test_a_request_larger_than_the_tpm_is_refused_outright(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(config(upstream.url, state=state, key_a="limits: {tpm: 100}"))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": CHAT, "max_tokens": 500})
    assert resp.status == 429 and "too large" in resp.json["error"]["message"]
    assert upstream.requests == []


def test_default_max_tokens_is_the_output_estimate_when_the_request_sets_none(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    routes = "  - {model: \"*\", to: up, default_max_tokens: 300}\n"
    gw = make_gateway(config(upstream.url, state=state, key_a="limits: {tpm: 10000}", routes=routes))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": CHAT})
    assert resp.header("x-ratelimit-remaining-tokens") == str(10000 - estimate({"messages": CHAT}) - 300)
    own = post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": CHAT, "max_tokens": 7})
    assert int(own.header("x-ratelimit-remaining-tokens") or 0) > int(resp.header("x-ratelimit-remaining-tokens") or 0)
    assert upstream.requests[0].json.get("max_tokens") is None, "the default is an estimate, not sent upstream"


def test_route_limit_is_shared_by_every_key(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    capture = Capture()
    routes = "  - {model: gpt-4o, to: up, limits: {rpm: 3}}\n  - {model: \"*\", to: up}\n"
    gw = make_gateway(config(upstream.url, state=state, routes=routes), extra_plugins=[("cap", capture)])
    a, b = sdk(gw), sdk(gw, LIMITED_KEY)
    for client in (a, b, a):
        resp = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
        assert "x-ratelimit-limit-requests" not in resp.headers  # success headers are the key's limits
    with pytest.raises(openai.RateLimitError) as info:
        b.chat.completions.create(model="gpt-4o", messages=CHAT)
    error = _rate_limit_error(info.value, "rate_limit_exceeded")
    assert "model 'gpt-4o'" in str(error["message"])
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "3"  # the route's, which said no
    assert capture.wait(4)[-1].rejections == [("route", "requests")]
    assert b.chat.completions.create(model="other", messages=CHAT).choices  # another route


# ---------------------------------------------------------------- concurrency


def test_concurrency_429_and_the_sdk_retry_that_honours_retry_after(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    gate = threading.Event()
    upstream.on("held", Behaviour(gate=gate))
    gw = make_gateway(config(upstream.url, state=state, key_a="limits: {concurrency: 1}"))
    results: dict[str, object] = {}

    def hold() -> None:
        results["held"] = sdk(gw).chat.completions.create(model="held", messages=CHAT)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not upstream.requests:
            assert time.monotonic() < deadline, "the first request never reached the upstream"
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as info:
            sdk(gw).chat.completions.create(model="gpt-4o", messages=CHAT)
        _rate_limit_error(info.value, "concurrency_limit_exceeded")
        assert info.value.response.headers["retry-after"] == "1"

        def retrying() -> None:  # the SDK's own retry: it waits retry-after (1 s), then asks again
            results["retried"] = sdk(gw, retries=3).chat.completions.create(model="gpt-4o", messages=CHAT)

        retrier = threading.Thread(target=retrying)
        started = time.monotonic()
        retrier.start()
        access_records(gw, 2, timeout=10)  # its first try was refused
        gate.set()
        retrier.join(20)
        holder.join(20)
    finally:
        gate.set()
    assert results["retried"] is not None and time.monotonic() - started >= 0.9
    statuses = [r["status"] for r in access_records(gw, 4)]
    assert statuses.count(429) == 2 and statuses.count(200) == 2
    assert snapshot(gw, "k:team-a")["concurrency"] == 0


# ---------------------------------------------------------------- budgets and cost


def test_budget_is_spent_by_cost_and_refuses_with_insufficient_quota(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    capture = Capture()
    routes = "  - {model: \"*\", to: up, price: {input: 1000, output: 2000}}\n"  # $0.001 in, $0.002 out per token
    gw = make_gateway(config(upstream.url, state=state, key_a="budget: {usd: 0.1, period: day}", routes=routes),
                      extra_plugins=[("cap", capture)])
    client = sdk(gw)
    spent = 0.0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(20):
            done = client.chat.completions.create(model="m", messages=CHAT, max_tokens=5)
            assert done.usage is not None
            spent += done.usage.prompt_tokens * 0.001 + done.usage.completion_tokens * 0.002
    error = _rate_limit_error(info.value, "insufficient_quota")
    assert "budget" in str(error["message"]) and "quota" in str(error["message"])
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 86400  # until the next UTC day
    calls = capture.wait(len(upstream.requests) + 1)
    assert calls[-1].rejections == [("key", "budget")]
    assert capture.calls[-1].error_type == "limit_budget"
    costs = [c.cost_usd for c in capture.calls[:-1]]
    assert sum(costs) == pytest.approx(spent) and spent <= 0.1
    est_cost = (estimate({"messages": CHAT}) * 0.001 + 5 * 0.002)
    assert spent + est_cost > 0.1, "refused only when the next estimate would overspend"
    limiter = gw.runtime.limiter
    assert limiter is not None
    period = limiter.periods.current("day")[0]
    snap = snapshot(gw, "k:team-a", period)
    assert snap["spent_usd"] == pytest.approx(spent) and snap["reserved_usd"] == 0


def test_cost_usd_in_the_access_log_counts_cached_input(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    routes = "  - {model: \"*\", to: up, price: {input: 2.5, output: 10, cached_input: 1.25}}\n"
    gw = make_gateway(config(upstream.url, state=state, routes=routes))
    upstream.on("gpt-4o", Behaviour(cached_tokens=1))
    client = sdk(gw)
    done = client.chat.completions.create(model="gpt-4o", messages=CHAT, extra_headers={"x-request-id": "c1"})
    assert done.usage is not None
    prompt, out = done.usage.prompt_tokens, done.usage.completion_tokens
    record = access_record(gw, "c1")
    assert record["tokens_cached"] == 1
    assert record["cost_usd"] == pytest.approx(((prompt - 1) * 2.5 + 1 * 1.25 + out * 10) / 1e6)
    stream = client.chat.completions.create(model="m", messages=CHAT, stream=True, extra_headers={"x-request-id": "c2"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: hello there"
    streamed = access_record(gw, "c2")
    assert streamed["cost_usd"] == pytest.approx((streamed["tokens_in"] * 2.5 + streamed["tokens_out"] * 10) / 1e6)
    assert streamed["cost_usd"] > 0


# ---------------------------------------------------------------- providers: capacity moves on


def test_a_full_provider_quota_moves_to_the_next_target_then_answers_upstream_capacity(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    capture = Capture()
    base = f"type: openai, base_url: \"{upstream.url}/v1\", api_key: \"${{UPSTREAM_KEY}}\""
    providers = f"  east: {{{base}, limits: {{rpm: 1}}}}\n  west: {{{base}, limits: {{rpm: 1}}}}\n"
    routes = "  - {model: \"*\", to: [{provider: east, model: e}, {provider: west, model: w}]}\n"
    gw = make_gateway(config(upstream.url, state=state, providers=providers, routes=routes),
                      extra_plugins=[("cap", capture)])
    client = sdk(gw)
    client.chat.completions.create(model="m", messages=CHAT)
    client.chat.completions.create(model="m", messages=CHAT)
    assert [r.json["model"] for r in upstream.requests] == ["e", "w"]
    assert capture.wait(2)[1].rejections == [("provider", "requests")]
    assert capture.calls[1].fallbacks == ["east: skipped, provider limit reached"]
    assert capture.calls[1].status == 200
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=CHAT)
    _rate_limit_error(info.value, "upstream_capacity_exceeded")
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 61
    assert capture.wait(3)[2].rejections == [("provider", "requests"), ("provider", "requests")]
    assert capture.calls[2].error_type == "upstream_capacity"
    assert len(upstream.requests) == 2


# ---------------------------------------------------------------- settlement: nothing leaks


def test_settlement_of_streams_errors_fallbacks_and_disconnects(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], sdk: Callable[..., openai.OpenAI]
) -> None:
    routes = ("  - {model: fb, to: [{provider: up, model: flaky}, {provider: up, model: gpt-4o}]}\n"
              "  - {model: \"*\", to: up}\n")
    gw = make_gateway(config(upstream.url, state=state, key_a="limits: {rpm: 100, tpm: 100000, concurrency: 5}",
                             routes=routes))
    client = sdk(gw)
    used = 0
    # A stream whose client did not ask for usage: the gateway still settles to the real usage.
    stream = client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True, max_tokens=50)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    access_records(gw, 1)
    used += 2 + 3  # the fake's usage: "hello there" -> "Echo: hello there"
    assert snapshot(gw, "k:team-a") == {"requests": 1, "tokens": used, "concurrency": 0, "reserved_usd": 0,
                                        "spent_usd": 0}
    # An upstream error that is the client's fault: released, as if never admitted.
    upstream.on("bad", Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="bad", messages=CHAT, max_tokens=50)
    access_records(gw, 2)
    assert snapshot(gw, "k:team-a") == {"requests": 1, "tokens": used, "concurrency": 0, "reserved_usd": 0,
                                        "spent_usd": 0}
    # A fallback: settled once, to the usage of the target that answered.
    upstream.on("flaky", Behaviour(status=500))
    client.chat.completions.create(model="fb", messages=CHAT, max_tokens=50)
    access_records(gw, 3)
    used += 5
    assert snapshot(gw, "k:team-a")["tokens"] == used and snapshot(gw, "k:team-a")["requests"] == 2
    # A client that leaves mid-stream frees its slot at once; its tokens stay at the estimate.
    upstream.on("long", Behaviour(words=200, chunk_delay=0.05))
    body = {"model": "long", "messages": CHAT, "stream": True, "max_tokens": 50}
    stream = client.chat.completions.create(**body)  # type: ignore[call-overload]
    next(iter(stream))
    stream.close()
    assert upstream.disconnected.wait(10), "the upstream stream was not cancelled"
    access_records(gw, 4)
    snap = snapshot(gw, "k:team-a")
    assert snap["concurrency"] == 0 and snap["requests"] == 3
    assert snap["tokens"] == used + estimate(body)


def test_limits_survive_a_reload(state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    text = config(upstream.url, state=state, key_a="limits: {rpm: 2}")
    gw = make_gateway(text)
    for _ in range(2):
        assert post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": CHAT}).status == 200
    assert gw.reload(text + "# touched\n")
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": CHAT}).status == 429
    assert gw.reload(config(upstream.url, state=state, key_a="limits: {rpm: 3}"))  # a raised limit applies at once
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": CHAT}).status == 200


def test_pass_through_is_counted_and_settled(
    state: str, upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(config(upstream.url, state=state, key_a="limits: {rpm: 100, concurrency: 1}"))
    assert post_json(f"{gw.base_url}/moderations", {"model": "omni-moderation-latest", "input": "x"}).status == 200
    speech = post_json(f"{gw.base_url}/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert speech.status == 200 and speech.header("x-ratelimit-limit-requests") == "100"
    access_records(gw, 2)
    assert snapshot(gw, "k:team-a")["requests"] == 2 and snapshot(gw, "k:team-a")["concurrency"] == 0


def test_usage_of_a_responses_body_counts_cached_input() -> None:
    from proxy.upstream.openai_compat import OpenAICompatibleProvider

    body = orjson.dumps({"id": "resp_1", "output": [], "usage": {
        "input_tokens": 30, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 5, "total_tokens": 35}})
    usage = OpenAICompatibleProvider._usage_of(body)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (30, 5, 20)
