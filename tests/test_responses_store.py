"""Stored responses: retrieval, input items, deletion, TTL, size cap, ownership, Redis shared by processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from core_helpers import ENV, post_json, raw, wait_healthy
from fakes.openai_upstream import FakeOpenAI
from openapi_check import parse_response_stream, validate, validate_response, validate_response_stream
from responses_helpers import CLIENT_KEY, OTHER_KEY, create, error_of, responses_config

from proxy.testing import Gateway, RedisServer, free_port


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(responses_config(upstream.url))


def test_get_input_items_and_delete(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    r = client.responses.create(model="chat-mini", input=[
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "second"},
    ])  # fmt: skip
    got = raw("GET", f"{gw.base_url}/responses/{r.id}")
    assert got.status == 200 and validate_response(got.json)["id"] == r.id
    assert got.json["output"] == r.model_dump(mode="json", exclude_unset=True, by_alias=True)["output"]
    listing = raw("GET", f"{gw.base_url}/responses/{r.id}/input_items")
    validate("ResponseItemList", listing.json)
    texts = [item["content"][0]["text"] for item in listing.json["data"]]
    assert texts == ["second", "earlier answer", "first", "Answer in French."]  # newest first, as OpenAI lists
    page = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["Answer in French.", "first"] and page.has_more  # type: ignore[union-attr]
    rest = client.responses.input_items.list(r.id, order="asc", after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["earlier answer", "second"]  # type: ignore[union-attr]
    deleted = raw("DELETE", f"{gw.base_url}/responses/{r.id}")
    assert deleted.status == 200 and deleted.json == {"id": r.id, "object": "response.deleted", "deleted": True}
    error_of(raw("GET", f"{gw.base_url}/responses/{r.id}"), 404)
    error_of(raw("DELETE", f"{gw.base_url}/responses/{r.id}"), 404)
    client.close()


def test_a_stored_response_streams_again_from_any_event(gw: Gateway, upstream: FakeOpenAI) -> None:
    """`GET ?stream=true` replays the events that deliver the stored response; `starting_after`
    resumes after a sequence number, as a client does after losing its connection."""
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    first = create(gw, {"model": "chat-mini", "input": "hello again"})
    called = create(gw, {"model": "chat-mini", "input": "use the tool please", "tools": [tool]})
    assert called["output"][0]["type"] == "function_call"
    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    for stored in (first, called):
        resp = raw("GET", f"{gw.base_url}/responses/{stored['id']}?stream=true")
        assert resp.status == 200 and (resp.header("content-type") or "").startswith("text/event-stream")
        events = validate_response_stream(parse_response_stream(resp.body), terminal="response.completed")
        assert events[-1]["response"] == stored
        resumed = raw("GET", f"{gw.base_url}/responses/{stored['id']}?stream=true&starting_after=2")
        assert parse_response_stream(resumed.body) == events[3:]
        # The SDK's own reader: retrieve(stream=True).
        with client.responses.retrieve(stored["id"], stream=True) as sdk_stream:
            kinds = [event.type for event in sdk_stream]
        assert kinds == [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == [called["output"][0]["arguments"]]
    error_of(raw("GET", f"{gw.base_url}/responses/{first['id']}?stream=true&starting_after=x"), 400)
    error_of(raw("GET", f"{gw.base_url}/responses/{first['id']}?stream=true", key=OTHER_KEY), 404)
    client.close()


def test_another_key_gets_404_everywhere(gw: Gateway) -> None:
    r = create(gw, {"model": "chat-mini", "input": "mine"})
    rid = r["id"]
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        error = error_of(raw(method, f"{gw.base_url}/responses/{rid}{path}", key=OTHER_KEY), 404)
        assert rid in error["message"]
    resp = post_json(f"{gw.base_url}/responses", {"model": "chat-mini", "input": "x", "previous_response_id": rid},
                     key=OTHER_KEY)  # fmt: skip
    assert error_of(resp, 404)["code"] == "previous_response_not_found"
    assert raw("GET", f"{gw.base_url}/responses/{rid}").status == 200  # still there for its owner
    error_of(raw("GET", f"{gw.base_url}/responses/{rid}", key=None), 401)


def test_store_false_stores_nothing(gw: Gateway) -> None:
    r = create(gw, {"model": "chat-mini", "input": "forget me", "store": False})
    assert r["store"] is False
    error_of(raw("GET", f"{gw.base_url}/responses/{r['id']}"), 404)


def test_stored_responses_expire_after_the_ttl(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(responses_config(upstream.url, state="responses: {ttl: 0.5s}\n"))
    r = create(gw, {"model": "chat-mini", "input": "short-lived"})
    assert raw("GET", f"{gw.base_url}/responses/{r['id']}").status == 200
    deadline = time.monotonic() + 10
    while raw("GET", f"{gw.base_url}/responses/{r['id']}").status == 200:
        assert time.monotonic() < deadline, "the stored response outlived its TTL"
        time.sleep(0.05)
    error_of(raw("GET", f"{gw.base_url}/responses/{r['id']}"), 404)


def test_a_response_over_the_size_cap_is_answered_but_not_stored(
    upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(responses_config(upstream.url, state="responses: {max_bytes: 2KiB}\n"))
    small = create(gw, {"model": "chat-mini", "input": "small"})
    big = create(gw, {"model": "chat-mini", "input": "big " * 600})
    assert raw("GET", f"{gw.base_url}/responses/{small['id']}").status == 200
    error_of(raw("GET", f"{gw.base_url}/responses/{big['id']}"), 404)
    assert "exceed responses.max_bytes" in gw.log_text


def test_responses_config_is_validated(tmp_path: Path) -> None:
    from proxy.config.load import load_config
    from proxy.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("responses: {ttl: 2h, max_bytes: 1MiB, ownership_ttl: 7d}\nroutes: []\n")
    settings = load_config(path, {}).responses
    assert (settings.ttl, settings.max_bytes, settings.ownership_ttl) == (7200, 1 << 20, 7 * 86400)
    path.write_text("responses: {ttl: soon, colour: red}\nroutes: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "c.yaml:1: responses.ttl" in str(info.value)


def _serve(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip


def test_redis_store_is_shared_by_two_gateway_processes(
    upstream: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(responses_config(upstream.url, state=f"state: {{redis: {redis_server.url}}}\n"))
    ports = [free_port(), free_port()]
    procs = [_serve(config, port, ENV) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, proc in zip(urls, procs, strict=True):
            wait_healthy(url, proc)
        a, b = (openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0) for url in urls)
        first = a.responses.create(model="chat-mini", input="remember 42")
        native = a.responses.create(model="gpt-4o", input="native on A")
        assert b.responses.retrieve(first.id).output_text == "Echo: remember 42"
        assert b.responses.retrieve(native.id).id == native.id  # the ownership record is shared too
        follow = b.responses.create(model="chat-mini", input="what was it?", previous_response_id=first.id)
        assert upstream.last("/v1/chat/completions").json["messages"][0]["content"] == "remember 42"
        assert a.responses.input_items.list(follow.id).data[0].type == "message"
        other = openai.OpenAI(base_url=f"{urls[1]}/v1", api_key=OTHER_KEY, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(first.id)
        b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(first.id)
        for c in (a, b, other):
            c.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
            if proc.stderr:
                proc.stderr.close()


def test_state_outage_reads_are_503_and_writes_are_skipped(
    upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    with RedisServer() as redis:
        gw = make_gateway(responses_config(upstream.url, state=f"state: {{redis: {redis.url}}}\n"))
        r = create(gw, {"model": "chat-mini", "input": "before"})
        redis.stop()
        error = error_of(raw("GET", f"{gw.base_url}/responses/{r['id']}"), 503)
        assert error["code"] == "state_unavailable"
        assert create(gw, {"model": "chat-mini", "input": "still answered"})["status"] == "completed"
        assert "not stored: the shared state is unreachable" in gw.log_text
