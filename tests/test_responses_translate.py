"""The Responses API translated onto a provider's chat path (the openai SDK's `responses` client).

`chat-*` goes to the fake OpenAI server seen as a chat-only server (`responses: translate`),
`demo-*` to the demo provider; every Response and every event is checked against the spec.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import post_json, raw
from fakes.openai_upstream import Behaviour, FakeOpenAI, image_tag
from openapi_check import validate_response, validate_response_stream
from responses_helpers import CLIENT_KEY, create, error_of, responses_config, stream_events

from proxy.testing import Gateway

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": CITY}


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    """The shared `client` fixture drives this gateway."""
    return make_gateway(responses_config(upstream.url))


def test_text_answer_is_a_spec_valid_response_that_echoes_the_request(
    client: openai.OpenAI, gw: Gateway, upstream: FakeOpenAI
) -> None:
    r = client.responses.create(
        model="chat-mini", input="hello there", instructions="Be brief.", temperature=0.3, top_p=0.9,
        max_output_tokens=64, metadata={"team": "a"}, store=True,
    )  # fmt: skip
    assert r.output_text == "Echo: hello there"
    body = validate_response(r.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert body["status"] == "completed" and body["object"] == "response"
    assert (body["instructions"], body["temperature"], body["top_p"]) == ("Be brief.", 0.3, 0.9)
    assert (body["max_output_tokens"], body["metadata"], body["store"]) == (64, {"team": "a"}, True)
    assert body["tool_choice"] == "auto" and body["tools"] == [] and body["parallel_tool_calls"] is True
    assert body["previous_response_id"] is None and body["text"]["format"] == {"type": "text"}
    message = body["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0] == {"type": "output_text", "text": "Echo: hello there", "annotations": [],
                                     "logprobs": []}  # fmt: skip
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens == 3
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    # What went upstream: a chat request.
    sent = upstream.last("/v1/chat/completions").json
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert (sent["temperature"], sent["top_p"], sent["max_completion_tokens"]) == (0.3, 0.9, 64)
    assert "metadata" not in sent and "store" not in sent and "input" not in sent
    record = gw.wait_access_log(1)[-1]
    assert (record["route"], record["provider"], record["status"]) == ("/v1/responses", "chat", 200)
    assert (record["tokens_in"], record["tokens_out"]) == (r.usage.input_tokens, 3)


def test_stream_emits_the_spec_event_sequence(gw: Gateway) -> None:
    events = stream_events(gw, {"model": "chat-mini", "input": "one two three"}, terminal="response.completed")
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Echo: one two three"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == deltas
    assert final["usage"]["output_tokens"] == 4 and final["usage"]["input_tokens"] > 0
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    record = gw.wait_access_log(1)[-1]
    assert record["stream"] is True and record["tokens_out"] == 4


def test_sdk_stream_helper_accumulates_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="demo-chat", input="hi stream") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "This is relaygate's demo provider. You said: hi stream"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.usage is not None and final.usage.total_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_resending_items(client: openai.OpenAI, upstream: FakeOpenAI, stream: bool) -> None:
    question = "Please use the tool for Paris"
    if stream:
        with client.responses.stream(model="chat-mini", input=question, tools=[WEATHER]) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model="chat-mini", input=question, tools=[WEATHER])
    validate_response(first.model_dump(mode="json", exclude_unset=True, by_alias=True))
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments) == {"echo": question}
    assert first.tools[0].name == "get_weather" and first.tools[0].strict is True
    sent = upstream.last("/v1/chat/completions").json
    fn = {"name": "get_weather", "description": "Weather in a city", "parameters": CITY}
    assert sent["tools"] == [{"type": "function", "function": fn}]
    follow = [
        {"role": "user", "content": question},
        *[item.model_dump(mode="json", exclude_unset=True, by_alias=True) for item in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"},
    ]
    second = client.responses.create(model="chat-mini", input=follow, tools=[WEATHER], store=False)
    assert second.output_text == "The tool said: sunny, 21C"
    messages = upstream.last("/v1/chat/completions").json["messages"]
    assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"][0]["id"] == calls[0].call_id
    assert messages[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 21C"}


def test_tool_round_trip_with_previous_response_id(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    first = client.responses.create(model="chat-mini", input="use the tool now", tools=[WEATHER],
                                    instructions="Old instructions")  # fmt: skip
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="chat-mini", previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
    )  # fmt: skip
    assert second.output_text == "The tool said: 42" and second.previous_response_id == first.id
    messages = upstream.last("/v1/chat/completions").json["messages"]
    # The stored conversation, without the previous response's instructions (as OpenAI does).
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    third = client.responses.create(model="chat-mini", previous_response_id=second.id, input="thanks")
    roles = [m["role"] for m in upstream.last("/v1/chat/completions").json["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"] and third.status == "completed"


def test_structured_output(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}
    r = client.responses.create(model="chat-mini", input="json please", text={"format": fmt})
    body = validate_response(r.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert body["text"]["format"]["name"] == "reply"
    sent = upstream.last("/v1/chat/completions").json
    assert sent["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "reply", "schema": schema, "strict": True}}  # fmt: skip
    client.responses.create(model="chat-mini", input="json", text={"format": {"type": "json_object"}})
    assert upstream.last("/v1/chat/completions").json["response_format"] == {"type": "json_object"}


def test_images_travel_as_chat_image_parts(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    url = f"data:image/png;base64,{PNG}"
    r = client.responses.create(model="chat-mini", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": url, "detail": "low"},
    ]}])  # fmt: skip
    assert image_tag(url) in r.output_text
    content = upstream.last("/v1/chat/completions").json["messages"][0]["content"]
    assert content == [{"type": "text", "text": "what is this"},
                       {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_gives_incomplete(gw: Gateway, stream: bool) -> None:
    payload = {"model": "chat-mini", "input": "a b c d e f g h i j k l m n o p q r s t", "max_output_tokens": 16}
    if stream:
        events = stream_events(gw, payload, terminal="response.incomplete")
        body = events[-1]["response"]
        done = [e for e in events if e["type"] == "response.output_item.done"][-1]
        assert done["item"]["status"] == "incomplete"
    else:
        body = create(gw, payload)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["completed_at"] is None and body["output"][0]["status"] == "incomplete"
    assert len(body["output"][0]["content"][0]["text"].split()) == 16


def test_a_refusal_is_a_refusal_part_streamed_or_not(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    refusal = "I cannot help with that."
    upstream.on("gpt-4o-mini", Behaviour(refusal=refusal))
    r = client.responses.create(model="chat-mini", input="something bad")
    body = validate_response(r.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert body["output"][0]["content"] == [{"type": "refusal", "refusal": refusal}] and r.output_text == ""
    with client.responses.stream(model="chat-mini", input="something bad") as stream:
        deltas = [e.delta for e in stream if e.type == "response.refusal.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == refusal and len(deltas) == 5
    assert final.model_dump(mode="json")["output"][0]["content"] == [{"type": "refusal", "refusal": refusal}]


def test_upstream_errors_keep_their_meaning(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o-mini", Behaviour(status=429, retry_after="3"))
    resp = post_json(f"{gw.base_url}/responses", {"model": "chat-mini", "input": "hi"})
    error = error_of(resp, 429)
    assert resp.header("retry-after") == "3" and error["code"] == "rate_limit_exceeded"
    upstream.on("gpt-4o-mini", Behaviour(status=400, error_message="bad thing", error_param="messages"))
    assert error_of(post_json(f"{gw.base_url}/responses", {"model": "chat-mini", "input": "hi"}), 400)["message"]


def test_a_failure_mid_stream_ends_with_the_spec_error_event(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o-mini", Behaviour(fail_after_chunks=3))
    events = stream_events(gw, {"model": "chat-mini", "input": "one two three four five"}, terminal="error")
    error = events[-1]
    assert error["code"] and error["message"] and "param" in error
    assert any(e["type"] == "response.output_text.delta" for e in events)
    record = gw.wait_access_log(1)[-1]
    assert record["error"] == error["code"]


def test_bad_input_gets_openai_shaped_400s(gw: Gateway) -> None:
    url = f"{gw.base_url}/responses"
    cases = [
        ({"model": "chat-mini", "input": "x", "tools": [{"type": "web_search_preview"}]}, "tools[0]", "web_search"),
        ({"model": "chat-mini", "input": "x", "tools": [{"type": "mcp", "server_label": "s"}]}, "tools[0]", "mcp"),
        ({"model": "chat-mini", "input": "x", "background": True}, "background", "background"),
        ({"model": "chat-mini", "input": "x", "conversation": "conv_1"}, "conversation", "conversation"),
        ({"model": "chat-mini", "input": "x", "frobnicate": 1}, "frobnicate", "frobnicate"),
        ({"model": "chat-mini", "input": "x", "include": ["message.output_text.logprobs"]}, "include[0]", "logprobs"),
        ({"model": "chat-mini", "input": 42}, "input", "input"),
        ({"model": "chat-mini", "input": [{"type": "computer_call_output"}]}, "input[0].type", "computer_call"),
        ({"model": "chat-mini"}, "input", "input"),
        ({"model": "chat-mini", "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id",
         "resp_nope"),
    ]  # fmt: skip
    for payload, param, named in cases:
        resp = post_json(url, payload)
        status = 404 if param == "previous_response_id" else 400
        error = error_of(resp, status)
        assert error["param"] == param and named in error["message"], (payload, error)
    # Accepted and ignored where ignoring cannot change the answer.
    ok = {"model": "chat-mini", "input": "x", "service_tier": "flex", "prompt_cache_key": "k", "safety_identifier": "u",
          "truncation": "disabled", "background": False, "include": ["reasoning.encrypted_content"]}  # fmt: skip
    assert create(gw, ok)["service_tier"] == "default"


def test_builtin_tool_goes_to_a_native_target_when_the_route_has_one(
    upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]
) -> None:
    routes = "  - {model: mixed, to: [{provider: chat, model: gpt-4o-mini}, {provider: up, model: gpt-4o}]}\n"
    gw = make_gateway(responses_config(upstream.url, routes=routes))
    r = create(gw, {"model": "mixed", "input": "search", "tools": [{"type": "web_search_preview"}]})
    assert r["id"].startswith("resp_fake")  # answered by OpenAI itself
    assert upstream.last().path == "/v1/responses"


def test_fallback_from_native_to_translated(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    routes = "  - {model: mixed, to: [{provider: up, model: gpt-4o}, {provider: chat, model: gpt-4o-mini}]}\n"
    gw = make_gateway(responses_config(upstream.url, routes=routes))
    upstream.on("gpt-4o", Behaviour(status=503))
    events = stream_events(gw, {"model": "mixed", "input": "fall back"}, terminal="response.completed")
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Echo: fall back"
    record = gw.wait_access_log(1)[-1]
    assert record["provider"] == "chat" and record["fallbacks"] and record["tokens_out"] == 3


def test_azure_style_routes(gw: Gateway) -> None:
    for path in ("/openai/responses?api-version=2025-04-01-preview", "/openai/v1/responses",
                 "/openai/deployments/chat-mini/responses?api-version=2025-04-01-preview"):  # fmt: skip
        resp = raw("POST", gw.url + path, orjson.dumps({"model": "chat-mini", "input": "azure"}),
                   headers={"api-key": CLIENT_KEY}, key=None)  # fmt: skip
        assert resp.status == 200, (path, resp.body)
        assert validate_response(resp.json)["output"][0]["content"][0]["text"] == "Echo: azure"


def test_demo_provider_streams_and_answers(gw: Gateway) -> None:
    body = create(gw, {"model": "demo-chat", "input": "hello demo"})
    assert body["output"][0]["content"][0]["text"].endswith("hello demo")
    events = stream_events(gw, {"model": "demo-chat", "input": "stream demo"})
    validate_response_stream(events, terminal="response.completed")


def test_demo_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model="demo-chat", input="call it", tools=[WEATHER], tool_choice="required")
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather"
    second = client.responses.create(
        model="demo-chat", previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "fine"}],
    )  # fmt: skip
    assert second.status == "completed" and second.output_text
