"""Tool calls and reasoning (Claude thinking, DeepSeek R1) round trips through the gateway."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from bedrock_helpers import post, sse_json, validate
from fakes.bedrock import FakeBedrock

from proxy.testing import Gateway

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time.",
                                         "parameters": {"type": "object", "properties": {}}}}


def _stream_message(gw: Gateway, body: dict[str, Any]) -> tuple[dict[str, Any], str | None, list[dict[str, Any]]]:
    """Rebuild the assistant message from raw SSE chunks (checking each against the spec)."""
    resp = post(gw.base_url, "/chat/completions", {**body, "stream": True})
    assert resp.status == 200, resp.body
    chunks, done, errors = sse_json(resp.body)
    assert done and not errors
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        delta = chunk["choices"][0]["delta"]
        finish = chunk["choices"][0]["finish_reason"] or finish
        message["content"] += delta.get("content") or ""
        for key in ("reasoning_content", "reasoning_signature"):
            if key in delta:
                message[key] = message.get(key, "") + delta[key]
        for tc in delta.get("tool_calls") or ():
            call = calls.setdefault(tc["index"], {"id": "", "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
            call["id"] += tc.get("id") or ""
            call["function"]["name"] += (tc.get("function") or {}).get("name") or ""
            call["function"]["arguments"] += (tc.get("function") or {}).get("arguments") or ""
    if calls:
        assert sorted(calls) == list(range(len(calls)))  # indexes count tool calls only
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish, chunks


def _complete(gw: Gateway, body: dict[str, Any], stream: bool) -> tuple[dict[str, Any], str | None]:
    if stream:
        message, finish, _ = _stream_message(gw, body)
        return message, finish
    resp = post(gw.base_url, "/chat/completions", body)
    assert resp.status == 200, resp.body
    data = validate("CreateChatCompletionResponse", resp.json)
    return data["choices"][0]["message"], data["choices"][0]["finish_reason"]


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_round_trip(gw: Gateway, fake: FakeBedrock, stream: bool) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Rome? [[parallel:1]]"}]
    body = {"model": "claude", "messages": messages, "tools": [WEATHER, TIME], "tool_choice": "required"}
    message, finish = _complete(gw, body, stream)
    assert finish == "tool_calls"
    assert message["content"] == "Let me check."  # text kept alongside the tool calls
    calls = message["tool_calls"]
    assert [c["id"] for c in calls] == ["tooluse_aaa111", "tooluse_bbb222"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city":"Paris"}', '{"city":"Rome"}']
    sent = fake.requests[-1].json
    assert sent["toolConfig"]["toolChoice"] == {"any": {}}
    assert sent["toolConfig"]["tools"][0]["toolSpec"]["description"] == "get_weather"  # defaulted
    assert sent["toolConfig"]["tools"][1]["toolSpec"]["description"] == "The time."

    messages += [
        {"role": "assistant", "content": message["content"], "tool_calls": calls},
        {"role": "tool", "tool_call_id": "tooluse_aaa111", "content": "sunny"},
        {"role": "tool", "tool_call_id": "tooluse_bbb222", "content": [{"type": "text", "text": "rainy"}]},
    ]
    message, finish = _complete(gw, {"model": "claude", "messages": messages, "tools": [WEATHER, TIME]}, stream)
    assert finish == "stop" and message["content"] == "Tool said: sunny, rainy"
    sent = fake.requests[-1].json
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    results = [b["toolResult"]["toolUseId"] for b in sent["messages"][2]["content"]]
    assert results == ["tooluse_aaa111", "tooluse_bbb222"]
    assert sent["messages"][1]["content"][1]["toolUse"]["input"] == {"city": "Paris"}


def test_tool_choice_none_with_history_still_sends_tool_config(client: openai.OpenAI, fake: FakeBedrock) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    out = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER], tool_choice="none")
    assert out.choices[0].message.content == "Tool said: cold"
    config = fake.requests[-1].json["toolConfig"]
    assert "toolChoice" not in config and config["tools"][0]["toolSpec"]["name"] == "get_weather"
    # No tools at all, but history holds tool blocks: Bedrock still needs a toolConfig.
    out = client.chat.completions.create(model="claude", messages=messages)
    assert out.choices[0].message.content == "Tool said: cold"
    assert fake.requests[-1].json["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


def test_tool_choice_none_without_history_sends_no_tools(client: openai.OpenAI, fake: FakeBedrock) -> None:
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}],
                                   tools=[WEATHER], tool_choice="none")
    assert "toolConfig" not in fake.requests[-1].json


def test_named_tool_choice(client: openai.OpenAI, fake: FakeBedrock) -> None:
    out = client.chat.completions.create(
        model="nova", messages=[{"role": "user", "content": "time?"}], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert out.choices[0].message.tool_calls[0].function.name == "get_time"
    assert fake.requests[-1].json["toolConfig"]["toolChoice"] == {"tool": {"name": "get_time"}}


@pytest.mark.parametrize("stream", [False, True])
def test_claude_thinking_with_tools_over_two_turns(gw: Gateway, fake: FakeBedrock, stream: bool) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris? [[use-tool:1]]"}]
    body = {"model": "claude", "messages": messages, "tools": [WEATHER], "reasoning_effort": "low",
            "max_tokens": 500, "temperature": 0.5}
    message, finish = _complete(gw, body, stream)
    assert finish == "tool_calls"
    assert message["reasoning_content"] == "Let me think about the weather."
    assert message["reasoning_signature"]
    sent = fake.requests[-1].json
    assert sent["additionalModelRequestFields"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["inferenceConfig"]["maxTokens"] > 1024 and "temperature" not in sent["inferenceConfig"]

    messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}]
    message, finish = _complete(gw, {**body, "messages": messages}, stream)
    assert finish == "stop" and message["content"] == "Tool said: sunny"
    first = fake.requests[-1].json["messages"][1]["content"][0]
    assert first["reasoningContent"]["reasoningText"]["text"] == "Let me think about the weather."


def test_thinking_signature_must_come_back(client: openai.OpenAI) -> None:
    """Without the reasoning block Bedrock refuses the tool loop; the error reaches the client as a 400."""
    messages: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    with pytest.raises(openai.BadRequestError, match="thinking block"):
        client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER], reasoning_effort="high")


def test_redacted_reasoning_round_trip(gw: Gateway, fake: FakeBedrock) -> None:
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi [[redacted:1]]"}],
            "reasoning_effort": "medium"}
    message, _ = _complete(gw, body, False)
    assert message["reasoning_redacted"] == ["c2VjcmV0"]
    _, _, chunks = _stream_message(gw, body)
    assert any(c["choices"][0]["delta"].get("reasoning_redacted") == ["c2VjcmV0"] for c in chunks)
    body["messages"] += [message, {"role": "user", "content": "and?"}]
    _complete(gw, body, False)
    blocks = fake.requests[-1].json["messages"][1]["content"]
    assert blocks[1] == {"reasoningContent": {"redactedContent": "c2VjcmV0"}}
    assert fake.requests[-2].json["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 4096


@pytest.mark.parametrize("stream", [False, True])
def test_deepseek_r1_reasoning(gw: Gateway, fake: FakeBedrock, stream: bool) -> None:
    body = {"model": "deepseek", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}
    message, _ = _complete(gw, body, stream)
    assert message["reasoning_content"] == "Let me think about the weather."
    assert message["content"] == "Hello from fake Bedrock!"
    assert "additionalModelRequestFields" not in fake.requests[-1].json
