"""AzureStreamFixer on raw SSE blocks: what it drops, completes, merges and leaves alone."""

from __future__ import annotations

import orjson
from azure_support import sse_payloads
from openapi_check import validate
from relaygate_azure.stream import AzureStreamFixer

PFR = [{"prompt_index": 0, "content_filter_results": {}}]
QUIRK = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": PFR}


def ev(payload: object, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + orjson.dumps(payload) + sep


def chunk(content: str, **extra: object) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        **extra,
    }


def test_ordinary_blocks_pass_as_the_same_bytes_once_the_stream_is_known() -> None:
    fix = AzureStreamFixer(merge=False, object_name="chat.completion.chunk")
    assert fix(ev(QUIRK)) == b""
    first = ev(chunk("a"))
    assert fix(first) == first
    later = ev(chunk("b")) + ev(chunk("c"))
    assert fix(later) is later  # not even copied
    assert fix(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"


def test_crlf_framing_and_a_usage_chunk_with_empty_choices() -> None:
    fix = AzureStreamFixer(merge=False, object_name="chat.completion.chunk")
    usage = {**chunk("x"), "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    out = fix(ev(QUIRK, b"\r\n\r\n") + ev(chunk("a"), b"\r\n\r\n") + ev(usage, b"\r\n\r\n"))
    payloads = sse_payloads(out)
    assert [p["choices"] != [] for p in payloads] == [True, False]  # the usage chunk is kept
    for p in payloads:
        validate("CreateChatCompletionStreamResponse", p)


def test_merge_puts_the_results_on_the_first_chunk_with_choices() -> None:
    fix = AzureStreamFixer(merge=True, object_name="chat.completion.chunk")
    assert fix(ev(QUIRK)) == b""
    merged = sse_payloads(fix(ev(chunk("a"))))[0]
    assert merged["prompt_filter_results"] == PFR
    assert "prompt_filter_results" not in sse_payloads(fix(ev(chunk("b"))))[0]


def test_annotation_without_delta_is_completed_for_legacy_completions() -> None:
    fix = AzureStreamFixer(merge=False, object_name="text_completion")
    real = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 9,
        "model": "m",
        "choices": [{"index": 0, "text": "hi", "finish_reason": None}],
    }
    fix(ev(real))
    note = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [{"index": 0, "finish_reason": None, "content_filter_results": {}}],
    }
    fixed = sse_payloads(fix(ev(note)))[0]
    assert (fixed["id"], fixed["object"], fixed["created"], fixed["model"]) == ("cmpl-1", "text_completion", 9, "m")
    assert fixed["choices"][0]["text"] == ""


def test_error_events_and_non_json_pass_untouched() -> None:
    fix = AzureStreamFixer(merge=False, object_name="chat.completion.chunk")
    error = ev({"error": {"message": "boom", "object": ""}})
    assert fix(error) == error
    junk = b'data: {"object":"" not json\n\n'
    assert fix(junk) == junk
