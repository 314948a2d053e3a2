"""Pure modules: event-stream decoding, path encoding, request/stream mapping, error mapping."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.loaders import Loader
from botocore.model import ServiceModel
from botocore.serialize import create_serializer
from fakes.bedrock import encode_frame as fake_encode
from fakes.bedrock import event_frame, exception_frame
from fakes.bedrock_shapes import validate_body
from relaygate_bedrock.auth import model_path
from relaygate_bedrock.errors import bedrock_error, error_from_frame, error_from_response
from relaygate_bedrock.eventstream import EventStreamDecoder, EventStreamError, encode_frame
from relaygate_bedrock.request_map import map_chat
from relaygate_bedrock.stream_map import ChatStreamMapper

from proxy.errors import InvalidRequest, ModelNotFound, PermissionDenied, RateLimited, UpstreamError
from proxy.types import Guardrail

CLAUDE = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
PNG_URL = ("data:image/png;base64,"
           "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


# ---------------------------------------------------------------- event stream


def _frames() -> list[bytes]:
    return [
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}),
        event_frame("messageStop", {"stopReason": "end_turn"}),
        exception_frame("throttlingException", "slow down"),
    ]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 13, 64, 10_000])
def test_decoder_handles_any_split(step: int) -> None:
    data = b"".join(_frames())
    decoder = EventStreamDecoder()
    got = []
    for i in range(0, len(data), step):
        got.extend(decoder.feed(data[i : i + step]))
    assert decoder.pending == 0
    assert [h.get(":event-type") or h.get(":exception-type") for h, _ in got] == [
        "messageStart", "contentBlockDelta", "messageStop", "throttlingException"]
    assert orjson.loads(got[1][1])["delta"]["text"] == "héllo"


def test_decoder_agrees_with_botocore() -> None:
    data = b"".join(_frames())
    reference = EventStreamBuffer()
    reference.add_data(data)
    expected = [(m.headers, m.payload) for m in reference]
    assert list(EventStreamDecoder().feed(data)) == expected


def test_our_encoder_matches_the_fakes() -> None:
    headers = {":event-type": "metadata", ":content-type": "application/json", ":message-type": "event"}
    assert encode_frame(headers, b"{}") == fake_encode(headers, b"{}")


def test_decoder_typed_headers() -> None:
    hdrs = (b"\x01a\x00" + b"\x01b\x01" + b"\x01c\x02\x05" + b"\x01d\x03\x00\x07" + b"\x01e\x04\x00\x00\x00\x09"
            + b"\x01f\x05" + struct.pack(">q", -2) + b"\x01g\x06\x00\x02hi" + b"\x01h\x09" + bytes(range(16)))
    import zlib

    total = 12 + len(hdrs) + 4
    prelude = struct.pack(">II", total, len(hdrs))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    frame = prelude + hdrs
    frame += struct.pack(">I", zlib.crc32(frame))
    ((headers, payload),) = list(EventStreamDecoder().feed(frame))
    assert headers == {"a": True, "b": False, "c": 5, "d": 7, "e": 9, "f": -2, "g": b"hi",
                       "h": int.from_bytes(bytes(range(16)), "big")}
    assert payload == b""
    reference = EventStreamBuffer()
    reference.add_data(frame)
    ref = next(iter(reference)).headers
    assert {k: ref[k] for k in "abcdefg"} == {k: headers[k] for k in "abcdefg"}


@pytest.mark.parametrize("where", [5, 14, -2])
def test_decoder_rejects_corruption(where: int) -> None:
    data = bytearray(_frames()[1])
    data[where] ^= 0xFF
    with pytest.raises(EventStreamError):
        list(EventStreamDecoder().feed(bytes(data)))


def test_decoder_keeps_partial_frame() -> None:
    frame = _frames()[0]
    decoder = EventStreamDecoder()
    assert list(decoder.feed(frame[:-1])) == []
    assert decoder.pending == len(frame) - 1
    assert len(list(decoder.feed(frame[-1:]))) == 1 and decoder.pending == 0


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "model_id",
    [CLAUDE, "anthropic.claude-3-haiku-20240307-v1:0", "amazon.titan-embed-text-v2:0",
     "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
     "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0", "weird id+/ü~"],
)
@pytest.mark.parametrize(("operation", "suffix"), [("Converse", "converse"), ("ConverseStream", "converse-stream"),
                                                   ("InvokeModel", "invoke")])
def test_model_path_matches_botocore(model_id: str, operation: str, suffix: str) -> None:
    model = ServiceModel(Loader().load_service_model("bedrock-runtime", "service-2"), "bedrock-runtime")
    serializer = create_serializer("rest-json")
    params: dict[str, Any] = {"modelId": model_id}
    if operation == "InvokeModel":
        params["body"] = b"{}"
    request = serializer.serialize_to_request(params, model.operation_model(operation))
    assert model_path(model_id, suffix) == request["url_path"]


# ---------------------------------------------------------------- request mapping


def _valid(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    problems = validate_body("ConverseStream" if stream else "Converse", body)
    assert not problems, problems
    return body


def test_map_chat_shapes_are_valid() -> None:
    body = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": PNG_URL}}]},
            {"role": "assistant", "content": "ok", "reasoning_content": "hmm", "reasoning_signature": "sig",
             "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "res"},
            {"role": "user", "content": "next"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "strict": True}}],
        "tool_choice": "auto", "max_completion_tokens": 2000, "stop": "X", "reasoning_effort": "medium",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
    }
    mapped = map_chat(body, CLAUDE, stream=True, guardrail=Guardrail("gr1", "DRAFT", "enabled_full", None, "sync"))
    out = _valid(mapped.body, stream=True)
    assert mapped.thinking
    reasoning = {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}}
    assert out["messages"][1]["content"][0] == reasoning
    assert out["messages"][2]["content"] == [{"toolResult": {"toolUseId": "t1", "content": [{"text": "res"}]}},
                                             {"text": "next"}]
    assert out["inferenceConfig"] == {"maxTokens": 6096, "stopSequences": ["X"]}
    assert out["guardrailConfig"] == {"guardrailIdentifier": "gr1", "guardrailVersion": "DRAFT",
                                      "trace": "enabled_full", "streamProcessingMode": "sync"}
    assert out["toolConfig"]["tools"][0]["toolSpec"]["strict"] is True


def test_thinking_budget_stays_below_max_tokens() -> None:
    base = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high"}
    assert map_chat(base, CLAUDE).body["inferenceConfig"]["maxTokens"] == 16384 + 4096
    out = map_chat({**base, "max_tokens": 30000}, CLAUDE).body
    assert out["inferenceConfig"]["maxTokens"] == 30000
    out = map_chat({**base, "max_tokens": 100, "top_p": 0.5}, CLAUDE).body
    assert out["inferenceConfig"] == {"maxTokens": 16484}
    assert out["additionalModelRequestFields"]["thinking"]["budget_tokens"] < out["inferenceConfig"]["maxTokens"]
    out = map_chat({**base, "reasoning_effort": "low"}, "openai.gpt-oss-120b-1:0").body
    assert out["additionalModelRequestFields"] == {"reasoning_effort": "low"}


def test_tool_results_come_first_in_their_turn() -> None:
    out = map_chat({"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "r1"},
    ]}, CLAUDE).body
    assert out["toolConfig"]["tools"][0]["toolSpec"]["name"] == "f"  # synthesised from the history
    _valid(out)


@pytest.mark.parametrize("url", ["http://example.com/a.png", "https://example.com/a.png"])
def test_image_url_needs_fetching_enabled(url: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    with pytest.raises(InvalidRequest, match="not fetched"):
        map_chat(body, CLAUDE)
    mapped = map_chat(body, CLAUDE, fetch_images=True)
    assert [u for _, u in mapped.image_urls] == [url]


# ---------------------------------------------------------------- stream mapping


def _chunks(events: list[tuple[str, dict[str, Any]]], include_usage: bool = False) -> list[dict[str, Any]]:
    mapper = ChatStreamMapper("m", include_usage)
    out = b"".join(mapper.event(kind, orjson.dumps(payload)) for kind, payload in events)
    return [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e]


def test_tool_call_indexes_count_tools_only() -> None:
    chunks = _chunks([
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "r"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "t"}}),
        ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "a", "name": "f"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}),
        ("contentBlockStart", {"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "b", "name": "g"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}),
    ], include_usage=True)
    indexes = [tc["index"] for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert indexes == [0, 0, 1, 1]
    assert chunks[1]["choices"][0]["delta"] == {"reasoning_content": "r"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3


def test_stream_without_stop_is_incomplete() -> None:
    mapper = ChatStreamMapper("m", False)
    mapper.event("messageStart", b'{"role":"assistant"}')
    with pytest.raises(UpstreamError):
        mapper.check_complete()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "cls", "status"),
    [("ValidationException", InvalidRequest, 400), ("AccessDeniedException", PermissionDenied, 403),
     ("ResourceNotFoundException", ModelNotFound, 404), ("ModelErrorException", UpstreamError, 502),
     ("ThrottlingException", RateLimited, 429), ("ServiceQuotaExceededException", RateLimited, 429),
     ("ModelNotReadyException", RateLimited, 429), ("InternalServerException", UpstreamError, 500),
     ("SomethingNew", UpstreamError, 500)],
)
def test_error_names(name: str, cls: type, status: int) -> None:
    err = bedrock_error("p", name, "msg", 500 if name == "SomethingNew" else 400)
    assert isinstance(err, cls) and err.status == status


def test_error_from_response_and_frame() -> None:
    headers = {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/", "retry-after": "2"}
    err = error_from_response("p", 429, b'{"message":"slow"}', headers)
    assert err.status == 429 and err.headers == {"retry-after": "2"} and "slow" in err.message
    err = error_from_response("p", 403, b'{"Message":"User: arn:aws:iam::123:user/x is not authorized"}', {})
    assert err.status == 403 and "arn:aws" not in err.message
    err = error_from_frame("p", {":exception-type": "modelStreamErrorException"}, b'{"message":"boom"}')
    assert err.status == 502 and err.retryable
