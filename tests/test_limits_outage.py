"""Redis going away and coming back: `on_error: allow` serves, `deny` answers 503, and the
gateway recovers by itself once Redis answers again."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from core_helpers import access_records, post_json
from fakes.openai_upstream import Behaviour, FakeOpenAI
from limits_helpers import CHAT, config
from openapi_check import validate_error

from proxy.state import RedisStore
from proxy.testing import Gateway, RedisServer

BODY = {"model": "m", "messages": CHAT}


def _post(gw: Gateway) -> tuple[int, dict[str, object], str | None]:
    resp = post_json(f"{gw.base_url}/chat/completions", BODY)
    return resp.status, resp.json, resp.header("x-ratelimit-remaining-requests")


def _until_limited(gw: Gateway, timeout: float = 10.0) -> None:
    """Requests until one is counted again (Redis is probed at most twice a second)."""
    deadline = time.monotonic() + timeout
    while _post(gw)[2] is None:
        assert time.monotonic() < deadline, "the gateway did not go back to Redis"
        time.sleep(0.05)


def test_allow_serves_through_an_outage_and_recovers(upstream: FakeOpenAI,
                                                     make_gateway: Callable[..., Gateway]) -> None:
    with RedisServer() as redis:
        gw = make_gateway(config(upstream.url, state=f"redis: '{redis.url}', on_error: allow",
                                 key_a="limits: {rpm: 3}"))
        assert _post(gw)[2] == "2"
        redis.stop()
        results = [_post(gw) for _ in range(5)]  # more than the rpm: nothing is counted meanwhile
        assert [status for status, _, _ in results] == [200] * 5
        assert all(remaining is None for _, _, remaining in results), "no counts to report while down"
        store = gw.runtime.state
        assert isinstance(store, RedisStore) and store.outages == 1
        assert gw.log_text.count("shared state unreachable") == 1
        redis.start()
        _until_limited(gw)  # a fresh Redis: an empty window, counted again
        statuses = [_post(gw)[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert "reachable again" in gw.log_text


def test_deny_answers_503_until_redis_is_back(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    with RedisServer() as redis:
        gw = make_gateway(config(upstream.url, state=f"redis: '{redis.url}', on_error: deny",
                                 key_a="limits: {rpm: 100}"))
        assert _post(gw)[0] == 200
        redis.stop()
        status, body, _ = _post(gw)
        assert status == 503
        error = validate_error(body)
        assert error["code"] == "state_unavailable" and error["type"] == "server_error"
        assert access_records(gw, 2)[-1]["error"] == "state_unavailable"
        count = len(upstream.requests)
        assert _post(gw)[0] == 503 and len(upstream.requests) == count, "nothing goes upstream unchecked"
        redis.start()
        deadline = time.monotonic() + 10
        while _post(gw)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("on_error,status", [("allow", 200), ("deny", 503)])
def test_redis_down_at_startup(on_error: str, status: int, upstream: FakeOpenAI,
                               make_gateway: Callable[..., Gateway]) -> None:
    with RedisServer() as redis:
        redis.stop()
        gw = make_gateway(config(upstream.url, state=f"redis: '{redis.url}', on_error: {on_error}",
                                 key_a="limits: {rpm: 100}"))
        assert _post(gw)[0] == status  # the gateway started all the same
        redis.start()
        _until_limited(gw)


def test_redis_killed_while_a_request_is_in_flight(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    """Admitted, then Redis dies before it settles: the answer is served whole, and the
    settlement is dropped (its lease lapses) without an error reaching anyone."""
    with RedisServer() as redis:
        gw = make_gateway(config(upstream.url, state=f"redis: '{redis.url}'",
                                 key_a="limits: {rpm: 100, concurrency: 2}"))
        upstream.on("slow", Behaviour(words=20, chunk_delay=0.05))
        stopper_done = False

        def kill_when_streaming() -> None:
            nonlocal stopper_done
            deadline = time.monotonic() + 10
            while not upstream.requests:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            redis.stop()
            stopper_done = True

        import threading

        killer = threading.Thread(target=kill_when_streaming)
        killer.start()
        resp = post_json(f"{gw.base_url}/chat/completions", {**BODY, "model": "slow", "stream": True})
        killer.join(10)
        assert stopper_done and resp.status == 200 and resp.body.rstrip().endswith(b"data: [DONE]")
        assert access_records(gw, 1)[-1]["status"] == 200
        assert "Traceback" not in gw.log_text
