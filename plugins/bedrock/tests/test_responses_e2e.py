"""The Responses API on Bedrock Converse: translated by the core onto the plugin's chat path.

Claude's signed thinking must come back to Bedrock in a tool loop; the fake checks the
signature, so each way a client can continue (previous_response_id, resending items
from a stored response, `include: ["reasoning.encrypted_content"]` with `store: false`)
is driven to the second turn.
"""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest
from bedrock_helpers import CLAUDE, CLIENT_KEY, PNG, _openapi, post
from fakes.bedrock import FakeBedrock

from proxy.testing import Gateway

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
THOUGHT = "Let me think about the weather."


def create(gw: Gateway, payload: dict[str, Any]) -> dict[str, Any]:
    """One request, streamed or not; the final Response, every object and event checked against the spec."""
    check = _openapi()
    resp = post(gw.base_url, "/responses", payload)
    assert resp.status == 200, resp.body
    if not payload.get("stream"):
        return check.validate_response(resp.json)  # type: ignore[no-any-return]
    events = check.validate_response_stream(check.parse_response_stream(resp.body))
    assert events[-1]["type"] in ("response.completed", "response.incomplete"), events[-1]
    return events[-1]["response"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True])
def test_text_usage_and_images(gw: Gateway, fake: FakeBedrock, stream: bool) -> None:
    body = create(gw, {"model": "claude", "input": "hi [[cache:1]]", "instructions": "Be kind.", "stream": stream})
    assert body["output"][-1]["content"][0]["text"] == "Hello from fake Bedrock!"
    assert body["usage"]["input_tokens"] == 19 and body["usage"]["input_tokens_details"]["cached_tokens"] == 5
    sent = fake.requests[-1].json
    assert sent["system"] == [{"text": "Be kind."}] and sent["messages"][0]["role"] == "user"
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    content = [{"type": "input_text", "text": "what is it"}, {"type": "input_image", "image_url": image}]
    body = create(gw, {"model": "claude", "input": [{"role": "user", "content": content}], "stream": stream})
    assert body["output"][-1]["content"][0]["text"] == f"I see a png image of {len(PNG)} bytes."


@pytest.mark.parametrize("stream", [False, True])
def test_stop_reasons_give_incomplete(gw: Gateway, fake: FakeBedrock, stream: bool) -> None:
    body = create(gw, {"model": "claude", "input": "go on [[stop:max_tokens]]", "max_output_tokens": 32,
                       "stream": stream})  # fmt: skip
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert fake.requests[-1].json["inferenceConfig"]["maxTokens"] == 32


def test_errors(gw: Gateway) -> None:
    check = _openapi()
    resp = post(gw.base_url, "/responses", {"model": "claude", "input": "x [[error:ThrottlingException]]"})
    assert resp.status == 429 and check.validate_error(resp.json)
    resp = post(gw.base_url, "/responses", {"model": "claude", "input": "x", "tools": [{"type": "file_search"}]})
    assert resp.status == 400 and "file_search" in check.validate_error(resp.json)["message"]
    resp = post(gw.base_url, "/responses", {"model": "claude", "input": "x [[stream-error:throttlingException]]",
                                            "stream": True})  # fmt: skip
    events = check.validate_response_stream(check.parse_response_stream(resp.body), terminal="error")
    assert events[-1]["message"]


def _call_of(body: dict[str, Any]) -> dict[str, Any]:
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["reasoning", "message", "function_call"], kinds
    reasoning = body["output"][0]
    assert reasoning["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    return body["output"][2]  # type: ignore[no-any-return]


def _check_second_turn(fake: FakeBedrock, body: dict[str, Any]) -> None:
    assert body["status"] == "completed"
    assert body["output"][-1]["content"][0]["text"] == "Tool said: sunny"
    assistant = fake.requests[-1].json["messages"][1]
    assert assistant["role"] == "assistant"
    first = assistant["content"][0]["reasoningContent"]["reasoningText"]
    assert first["text"] == THOUGHT and first["signature"]  # the fake checked the signature too


TURN1 = {"model": "claude", "input": "Weather in Paris? [[use-tool:1]]", "tools": [WEATHER],
         "reasoning": {"effort": "low"}, "max_output_tokens": 500}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_claude_reasoning_with_tools_over_two_turns_with_previous_response_id(
    gw: Gateway, fake: FakeBedrock, stream: bool
) -> None:
    first = create(gw, {**TURN1, "stream": stream})
    call = _call_of(first)
    assert first["output"][0]["encrypted_content"] is None  # not asked for: it stays in the store
    assert fake.requests[-1].json["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 1024
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    second = create(gw, {**TURN1, "input": [output], "previous_response_id": first["id"], "stream": stream})
    _check_second_turn(fake, second)


@pytest.mark.parametrize("stream", [False, True])
def test_claude_reasoning_stateless_with_encrypted_content(gw: Gateway, fake: FakeBedrock, stream: bool) -> None:
    turn = {**TURN1, "store": False, "include": ["reasoning.encrypted_content"], "stream": stream}
    first = create(gw, turn)
    call = _call_of(first)
    assert first["output"][0]["encrypted_content"]
    resent = [{"role": "user", "content": TURN1["input"]}, *first["output"],
              {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]  # fmt: skip
    second = create(gw, {**turn, "input": resent})
    _check_second_turn(fake, second)
    # Nothing was stored: without the encrypted content the thought cannot be recovered.
    bare = [{**item, "encrypted_content": None} if item.get("type") == "reasoning" else item for item in resent]
    resp = post(gw.base_url, "/responses", {**turn, "input": bare, "stream": False})
    assert resp.status == 400 and "thinking" in resp.json["error"]["message"]


def test_claude_reasoning_items_resent_from_a_stored_response(gw: Gateway, fake: FakeBedrock) -> None:
    """The Agents SDK's way: store on, every item sent back as it came, without encrypted content."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    first = client.responses.create(**TURN1)  # type: ignore[arg-type]
    call = next(item for item in first.output if item.type == "function_call")
    resent = [{"role": "user", "content": TURN1["input"]},
              *[item.model_dump(mode="json", exclude_unset=True) for item in first.output],
              {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]  # fmt: skip
    second = client.responses.create(**{**TURN1, "input": resent})  # type: ignore[arg-type]
    _check_second_turn(fake, second.model_dump(mode="json", by_alias=True))
    client.close()


def test_redacted_reasoning_travels_in_the_encrypted_content(gw: Gateway, fake: FakeBedrock) -> None:
    turn = {**TURN1, "input": "Weather? [[use-tool:1]] [[redacted:1]]", "include": ["reasoning.encrypted_content"]}
    first = create(gw, turn)
    call = first["output"][-1]
    second = create(gw, {**turn, "input": [{"type": "function_call_output", "call_id": call["call_id"],
                                             "output": "sunny"}], "previous_response_id": first["id"]})  # fmt: skip
    assert second["status"] == "completed"
    blocks = fake.requests[-1].json["messages"][1]["content"]
    assert blocks[1] == {"reasoningContent": {"redactedContent": base64.b64encode(b"secret").decode()}}


def test_the_access_log_counts_translated_usage(gw: Gateway) -> None:
    create(gw, {"model": "claude", "input": "count me", "stream": True})
    record = gw.wait_access_log(1)[-1]
    assert (record["provider"], record["upstream_model"], record["route"]) == ("bedrock", CLAUDE, "/v1/responses")
    assert (record["tokens_in"], record["tokens_out"]) == (11, 7)


def test_structured_output_and_tools_without_reasoning(gw: Gateway, fake: FakeBedrock) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    create(gw, {"model": "claude", "input": "json", "text": {"format": {"type": "json_schema", "name": "r",
                                                                          "schema": schema}}})  # fmt: skip
    structure = fake.requests[-1].json["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert structure["name"] == "r"
    first = create(gw, {"model": "nova", "input": "x [[use-tool:1]]", "tools": [WEATHER], "stream": True})
    call = first["output"][-1]
    assert call["type"] == "function_call" and call["arguments"] == '{"city":"Paris"}'
    items = [{"role": "user", "content": "x [[use-tool:1]]"}, *first["output"],
             {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}]  # fmt: skip
    second = create(gw, {"model": "nova", "input": items, "tools": [WEATHER]})
    assert second["output"][-1]["content"][0]["text"] == "Tool said: ok"
