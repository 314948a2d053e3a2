"""Units of the Responses translation that end-to-end tests reach only with contrived upstreams."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest
from openapi_check import parse_response_stream, validate_response_stream

from proxy.errors import InvalidRequest
from proxy.responses.fields import check_fields
from proxy.responses.items import normalize, open_reasoning, seal_reasoning, to_messages
from proxy.responses.response import envelope
from proxy.responses.stream import StreamTranslator, replay
from proxy.types import Call

RID = "resp_" + "ab" * 24


def _call() -> Call:
    return Call(request_id="r", endpoint="responses", method="POST", path="responses", query_string="",
                headers=None, config=None)  # type: ignore[arg-type]  # fmt: skip


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _translate(blocks: list[bytes]) -> list[dict[str, Any]]:
    stored: list[dict[str, Any]] = []

    async def done(response: dict[str, Any]) -> None:
        stored.append(response)

    async def upstream() -> AsyncGenerator[bytes, None]:
        for block in blocks:
            yield block

    call = _call()
    translator = StreamTranslator(call, call, envelope({"model": "m"}, RID, "m"), False, done)
    body = b"".join([chunk async for chunk in translator.run(upstream())])
    return parse_response_stream(body)


async def test_a_stream_cut_before_its_end_is_an_error_not_a_completed_response() -> None:
    events = await _translate([_chunk({"role": "assistant", "content": "Hel"}), _chunk({"content": "lo"})])
    validate_response_stream(events, terminal="error")
    assert events[-1]["code"] == "incomplete_stream"


async def test_reasoning_text_and_parallel_tool_calls_in_one_stream() -> None:
    blocks = [
        _chunk({"role": "assistant", "reasoning_content": "think"}),
        _chunk({"reasoning_signature": "sig"}) + _chunk({"content": "Checking."}),
        _chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}),
        _chunk({}, "tool_calls") + _chunk({}, None, usage={"prompt_tokens": 3, "completion_tokens": 4,
                                                           "completion_tokens_details": {"reasoning_tokens": 2}}),
    ]  # fmt: skip
    events = validate_response_stream(await _translate(blocks), terminal="response.completed")
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call", "function_call"]
    assert final["output"][0]["summary"][0]["text"] == "think" and final["output"][0]["encrypted_content"] is None
    assert [(i["call_id"], i["arguments"]) for i in final["output"][2:]] == [("a", '{"x":1}'), ("b", "{}")]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    kinds = [e["type"] for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds.count("response.function_call_arguments.done") == 2


async def test_refusals_stream_as_refusal_parts_after_the_text_part() -> None:
    blocks = [
        _chunk({"role": "assistant", "content": "", "refusal": None}),
        _chunk({"content": "Well,"}),
        _chunk({"refusal": "I can't"}) + _chunk({"refusal": " help."}),
        _chunk({}, "stop"),
    ]
    events = validate_response_stream(await _translate(blocks), terminal="response.completed")
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.content_part.added", "response.refusal.delta", "response.refusal.delta",
        "response.refusal.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    by_kind = {e["type"]: e for e in events}
    assert by_kind["response.refusal.done"]["refusal"] == "I can't help."
    assert by_kind["response.refusal.done"]["content_index"] == 1
    content = events[-1]["response"]["output"][0]["content"]
    assert content == [{"type": "output_text", "text": "Well,", "annotations": [], "logprobs": []},
                       {"type": "refusal", "refusal": "I can't help."}]  # fmt: skip
    assert by_kind["response.output_item.done"]["item"]["content"] == content
    # A refusal alone is the message's only part, at index 0.
    events = validate_response_stream(await _translate([_chunk({"refusal": "No."}), _chunk({}, "stop")]))
    parts = [e for e in events if e["type"] in ("response.content_part.added", "response.refusal.delta")]
    assert [(e["type"], e["content_index"]) for e in parts] == [("response.content_part.added", 0),
                                                              ("response.refusal.delta", 0)]  # fmt: skip
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]


async def test_a_replay_is_the_stream_of_the_stored_response() -> None:
    blocks = [
        _chunk({"role": "assistant", "reasoning_content": "think"}),
        _chunk({"content": "Well,"}), _chunk({"refusal": "no."}),
        _chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f"}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}),
        _chunk({}, "tool_calls"),
    ]  # fmt: skip
    live = validate_response_stream(await _translate(blocks))
    stored = live[-1]["response"]
    again = validate_response_stream(parse_response_stream(replay(stored, False)), terminal="response.completed")
    assert again[-1]["response"] == stored
    kinds = [e["type"] for e in again]
    delta_kinds = {"response.output_text.delta", "response.refusal.delta", "response.reasoning_summary_text.delta",
                   "response.function_call_arguments.delta"}  # fmt: skip
    # The same events as the live stream, with each part's deltas as one.
    assert kinds == [e["type"] for i, e in enumerate(live)
                     if e["type"] not in delta_kinds or live[i - 1]["type"] != e["type"]]  # fmt: skip
    assert parse_response_stream(replay(stored, False, starting_after=len(again) - 2)) == again[-1:]


def test_field_fates() -> None:
    check_fields({"model": "m", "input": "x", "service_tier": "auto", "truncation": "disabled", "top_logprobs": 0})
    for body, param in (({"background": 1}, "background"), ({"top_logprobs": False}, "top_logprobs"),
                        ({"truncation": "auto"}, "truncation"), ({"prompt": {"id": "p"}}, "prompt")):  # fmt: skip
        with pytest.raises(InvalidRequest) as info:
            check_fields(body)
        assert info.value.param == param


def test_items_become_chat_messages() -> None:
    sealed = seal_reasoning("thought", "sig", ["red"])
    assert open_reasoning(sealed) == {"text": "thought", "signature": "sig", "redacted": ["red"]}
    assert open_reasoning("gAAAAA-someone-elses") is None
    items = normalize([
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "out"}]},
    ], RID)  # fmt: skip
    assert all(item.get("id") for item in items)
    messages = to_messages(items, "be brief")
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": "thought", "reasoning_signature": "sig",
         "reasoning_redacted": ["red"],
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "out"}]},
    ]  # fmt: skip
