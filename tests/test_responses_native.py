"""Native pass-through of /v1/responses: bytes untouched, usage counted, ownership enforced."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import UPSTREAM_KEY, post_json, raw
from fakes.openai_upstream import Behaviour, FakeOpenAI
from openapi_check import parse_response_stream, validate_response_stream
from responses_helpers import CLIENT_KEY, OTHER_KEY, create, error_of, responses_config, stream_events

from proxy.testing import Gateway


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(responses_config(upstream.url))


def test_body_goes_upstream_untouched_and_usage_is_counted(gw: Gateway, upstream: FakeOpenAI) -> None:
    payload = {"model": "gpt-4o", "input": "native hello", "tools": [{"type": "web_search_preview"}],
               "truncation": "auto", "background": False}  # fmt: skip
    body = orjson.dumps(payload)
    resp = raw("POST", f"{gw.base_url}/responses", body)
    assert resp.status == 200, resp.body
    sent = upstream.last("/v1/responses")
    assert sent.body == body  # the client's own bytes
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert resp.json["id"].startswith("resp_fake")
    assert resp.json["output"][0]["content"][0]["text"] == "Echo: native hello"
    record = gw.wait_access_log(1)[-1]
    assert (record["provider"], record["tokens_in"], record["tokens_out"]) == ("up", 12, 5)


def test_native_stream_passes_through_and_counts_usage(gw: Gateway, upstream: FakeOpenAI) -> None:
    events = stream_events(gw, {"model": "gpt-4o", "input": "stream me"}, terminal="response.completed")
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Echo: stream me"
    record = gw.wait_access_log(1)[-1]
    assert record["stream"] is True and (record["tokens_in"], record["tokens_out"]) == (12, 5)


def test_native_failure_mid_stream_ends_with_the_spec_error_event(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(fail_after_chunks=4))
    resp = post_json(f"{gw.base_url}/responses", {"model": "gpt-4o", "input": "a b c d e", "stream": True})
    events = validate_response_stream(parse_response_stream(resp.body), terminal="error")
    assert events[-1]["sequence_number"] == 4


def test_ownership_of_native_responses(gw: Gateway, upstream: FakeOpenAI) -> None:
    mine = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    theirs = openai.OpenAI(base_url=gw.base_url, api_key=OTHER_KEY, max_retries=0)
    r = mine.responses.create(model="gpt-4o", input="secret plans")
    assert mine.responses.retrieve(r.id).id == r.id  # forwarded to the provider that holds it
    assert mine.responses.input_items.list(r.id).data[0].type == "message"
    for attempt in (
        lambda: theirs.responses.retrieve(r.id),
        lambda: theirs.responses.input_items.list(r.id),
        lambda: theirs.responses.delete(r.id),
        lambda: theirs.responses.create(model="gpt-4o", input="more", previous_response_id=r.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert r.id in upstream.responses  # nothing reached the upstream for the other key
    follow = mine.responses.create(model="gpt-4o", input="and then?", previous_response_id=r.id)
    assert upstream.last("/v1/responses").json["previous_response_id"] == r.id and follow.id != r.id
    mine.responses.delete(r.id)
    assert r.id not in upstream.responses
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(r.id)
    mine.close()
    theirs.close()


def test_an_id_the_gateway_never_saw_is_not_found(gw: Gateway, upstream: FakeOpenAI) -> None:
    direct = post_json(f"{upstream.url}/v1/responses", {"model": "gpt-4o", "input": "behind the gateway's back"},
                       key=UPSTREAM_KEY)  # fmt: skip
    rid = direct.json["id"]
    error_of(raw("GET", f"{gw.base_url}/responses/{rid}"), 404)
    resp = post_json(f"{gw.base_url}/responses", {"model": "gpt-4o", "input": "x", "previous_response_id": rid})
    assert error_of(resp, 404)["param"] == "previous_response_id"


def test_store_false_leaves_no_ownership(gw: Gateway) -> None:
    r = create(gw, {"model": "gpt-4o", "input": "ephemeral", "store": False})
    error_of(raw("GET", f"{gw.base_url}/responses/{r['id']}"), 404)


def test_a_native_previous_response_pins_the_provider(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
                                                      ) -> None:  # fmt: skip
    routes = "  - {model: elsewhere, to: {provider: chat, model: gpt-4o-mini}}\n"
    gw = make_gateway(responses_config(upstream.url, routes=routes))
    r = create(gw, {"model": "gpt-4o", "input": "start natively"})
    resp = post_json(f"{gw.base_url}/responses", {"model": "elsewhere", "input": "x", "previous_response_id": r["id"]})
    assert error_of(resp, 400)["param"] == "previous_response_id"


def test_translated_history_is_spelt_out_for_a_native_target(gw: Gateway, upstream: FakeOpenAI) -> None:
    first = create(gw, {"model": "chat-mini", "input": "remember 7"})
    create(gw, {"model": "gpt-4o", "input": "what number?", "previous_response_id": first["id"]})
    sent = upstream.last("/v1/responses").json
    assert "previous_response_id" not in sent
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][0]["content"][0]["text"] == "remember 7" and "id" not in sent["input"][0]


def test_config_refuses_native_where_it_cannot_pass_through(upstream: FakeOpenAI, tmp_path: object) -> None:
    from proxy.config.load import load_config
    from proxy.errors import ConfigError
    from proxy.plugins import make_plugin_manager, provider_types

    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text("providers:\n  d: {type: demo, responses: native}\nroutes: []\n")
    types, _ = provider_types(make_plugin_manager())
    with pytest.raises(ConfigError, match=r"providers\.d\.responses"):
        load_config(path, types)
    path.write_text("providers:\n  d: {type: demo, responses: sometimes}\nroutes: []\n")
    with pytest.raises(ConfigError, match="native, translate"):
        load_config(path, types)


@pytest.mark.parametrize("chained", [False, True])
def test_native_tool_round_trip_and_sdk_stream(gw: Gateway, upstream: FakeOpenAI, chained: bool) -> None:
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}, "strict": False}
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        with client.responses.stream(model="gpt-4o", input="use the tool please", tools=[tool]) as stream:  # type: ignore[list-item]
            first = stream.get_final_response()
        call = next(item for item in first.output if item.type == "function_call")
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "found"}
        if chained:
            second = client.responses.create(model="gpt-4o", previous_response_id=first.id, input=[output],  # type: ignore[list-item]
                                             tools=[tool])  # type: ignore[list-item]  # fmt: skip
        else:
            items = [{"role": "user", "content": "use the tool please"},
                     *[item.model_dump(mode="json", exclude_unset=True) for item in first.output], output]  # fmt: skip
            second = client.responses.create(model="gpt-4o", input=items, tools=[tool])  # type: ignore[arg-type, list-item]
        assert second.output_text == "The tool said: found"
        assert upstream.last("/v1/responses").json.get("previous_response_id") == (first.id if chained else None)


def test_a_native_stream_ends_at_its_terminal_event(gw: Gateway, upstream: FakeOpenAI) -> None:
    """An upstream that lingers after `response.completed` does not hold the client's response open."""
    upstream.on("gpt-4o", Behaviour(linger=60))
    resp = post_json(f"{gw.base_url}/responses", {"model": "gpt-4o", "input": "quick", "stream": True}, timeout=15)
    events = validate_response_stream(parse_response_stream(resp.body), terminal="response.completed")
    assert events[-1]["response"]["status"] == "completed"
