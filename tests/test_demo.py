"""The offline demo provider: every body it builds conforms to OpenAI's spec."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterator

import openai
import orjson
import pytest
from core_helpers import post_json, sse_data
from openapi_check import validate

from proxy.testing import Gateway

DEMO = """\
providers:
  demo: {type: demo}
routes:
  - {model: "*", to: demo}
"""
CHAT = [{"role": "user", "content": "hello demo"}]


@pytest.fixture
def gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(DEMO)


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_demo_chat(gw: Gateway) -> None:
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "demo-chat", "messages": CHAT}, key=None)
    body = validate("CreateChatCompletionResponse", resp.json)
    assert body["choices"][0]["message"]["content"].endswith("You said: hello demo")


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("path", ["chat/completions", "completions"])
def test_demo_streams(path: str, include_usage: bool, gw: Gateway) -> None:
    payload: dict = {"model": "demo-chat", "stream": True}
    payload.update({"messages": CHAT} if path == "chat/completions" else {"prompt": "hello demo"})
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    resp = post_json(f"{gw.base_url}/{path}", payload, key=None)
    events = sse_data(resp.body)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    schema = "CreateChatCompletionStreamResponse" if path == "chat/completions" else "CreateCompletionResponse"
    for chunk in chunks:
        if path == "completions":
            # The spec has no stream schema for legacy completions; OpenAI streams the
            # response object with finish_reason null until the last choice chunk.
            chunk = {**chunk, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"}
                                          for c in chunk["choices"]]}
        validate(schema, chunk)
    assert (chunks[-1]["choices"] == []) is include_usage
    if include_usage:
        assert chunks[-1]["usage"]["total_tokens"] > 0


def test_demo_tool_call(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    resp = client.chat.completions.with_raw_response.create(model="demo-chat", messages=CHAT, tools=tools,
                                                            tool_choice="required")
    validate("CreateChatCompletionResponse", orjson.loads(resp.content))
    assert resp.parse().choices[0].message.tool_calls[0].function.name == "lookup"


def test_demo_completions_and_embeddings(client: openai.OpenAI) -> None:
    resp = client.completions.with_raw_response.create(model="demo-chat", prompt="hi")
    validate("CreateCompletionResponse", orjson.loads(resp.content))
    emb = client.embeddings.with_raw_response.create(model="demo-embed", input=["a", "b"], encoding_format="float")
    body = validate("CreateEmbeddingResponse", orjson.loads(emb.content))
    floats = body["data"][0]["embedding"]
    b64 = client.embeddings.with_raw_response.create(model="demo-embed", input=["a", "b"], encoding_format="base64")
    packed = base64.b64decode(orjson.loads(b64.content)["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(floats)}f", packed)) == pytest.approx(floats, rel=1e-6)


def test_demo_models(client: openai.OpenAI) -> None:
    resp = client.models.with_raw_response.list()
    validate("ListModelsResponse", orjson.loads(resp.content))
    assert {"demo-chat", "demo-embed"} <= {m.id for m in resp.parse().data}


# ---------------------------------------------------------------- a model for the first five minutes


def _chat(gw: Gateway, **payload: object) -> dict:
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "demo-chat", "messages": CHAT, **payload}, key=None)
    assert resp.status == 200, resp.body
    return validate("CreateChatCompletionResponse", resp.json)


def _chat_stream(gw: Gateway, **payload: object) -> list[dict]:
    resp = post_json(f"{gw.base_url}/chat/completions",
                     {"model": "demo-chat", "messages": CHAT, "stream": True, **payload}, key=None)
    events = sse_data(resp.body)
    assert events[-1] == b"[DONE]"
    return [validate("CreateChatCompletionStreamResponse", orjson.loads(e)) for e in events[:-1]]


@pytest.mark.parametrize(("value", "count"), [([1, 2, 3], 1), ([[1, 2], [3]], 2), ("text", 1), (["a", "b"], 2)])
def test_embedding_inputs_as_openai_takes_them(value: object, count: int, client: openai.OpenAI) -> None:
    """A flat token array is one input (it was a 500, and the SDK retried it three times)."""
    resp = client.embeddings.with_raw_response.create(model="demo-embed", input=value,  # type: ignore[arg-type]
                                                      encoding_format="float")
    body = validate("CreateEmbeddingResponse", orjson.loads(resp.content))
    assert len(body["data"]) == count
    if value == [1, 2, 3]:
        assert body["usage"]["prompt_tokens"] == 3
    assert len(client.embeddings.create(model="demo-embed", input=value).data) == count  # type: ignore[arg-type]


def test_embedding_input_of_mixed_types_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="demo-embed", input=[1, "a"])  # type: ignore[list-item]
    assert info.value.param == "input"


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a place", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["location", "unit"], "additionalProperties": False}}}
BOOKING = {
    "type": "object",
    "$defs": {"guest": {"type": "object", "properties": {"name": {"type": "string", "minLength": 3},
                                                          "age": {"type": "integer", "minimum": 18, "maximum": 99}},
                        "required": ["name", "age"], "additionalProperties": False}},
    "properties": {
        "date": {"type": "string", "format": "date"},
        "nights": {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 2},
        "guests": {"type": "array", "items": {"$ref": "#/$defs/guest"}, "minItems": 2, "maxItems": 4},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True},
        "room": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["single", "double"]}]},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "price": {"type": "number", "minimum": 10.5, "maximum": 20},
        "kind": {"const": "hotel"},
    },
    "required": ["date", "nights", "guests", "tags", "room", "code", "price", "kind"],
    "additionalProperties": False,
}


def _valid_for(schema: dict, value: object) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(value)


def test_auto_calls_a_tool_the_user_asks_for(gw: Gateway) -> None:
    ask = [{"role": "user", "content": "What's the weather in Paris? Use the get_weather tool."}]
    choice = _chat(gw, messages=ask, tools=[WEATHER])["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    _valid_for(WEATHER["function"]["parameters"], orjson.loads(call["function"]["arguments"]))
    # Not asked: it answers in text. A tool's result: it answers in text about it.
    assert _chat(gw, tools=[WEATHER])["choices"][0]["finish_reason"] == "stop"
    result = [*ask, choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}]
    answer = _chat(gw, messages=result, tools=[WEATHER])["choices"][0]
    assert answer["finish_reason"] == "stop" and "sunny, 21 C" in answer["message"]["content"]
    assert _chat(gw, messages=ask, tools=[WEATHER], tool_choice="none")["choices"][0]["finish_reason"] == "stop"


def test_the_sdks_tool_loop(client: openai.OpenAI) -> None:
    messages: list = [{"role": "user", "content": "call get weather for Rome"}]
    first = client.chat.completions.create(model="demo-chat", messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    calls = first.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    messages += [first.choices[0].message, {"role": "tool", "tool_call_id": calls[0].id, "content": "rain"}]
    second = client.chat.completions.create(model="demo-chat", messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    assert second.choices[0].message.content and "rain" in second.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_arguments_are_valid_for_its_schema(stream: bool, gw: Gateway) -> None:
    tool = {"type": "function", "function": {"name": "book", "parameters": BOOKING}}
    forced = {"type": "function", "function": {"name": "book"}}
    if stream:
        chunks = _chat_stream(gw, tools=[WEATHER, tool], tool_choice=forced)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        calls = [t for d in deltas for t in d.get("tool_calls") or ()]
        arguments = "".join(t["function"].get("arguments") or "" for t in calls)
        assert calls[0]["function"]["name"] == "book"
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        call = _chat(gw, tools=[WEATHER, tool], tool_choice=forced)["choices"][0]["message"]["tool_calls"][0]
        assert call["function"]["name"] == "book"
        arguments = call["function"]["arguments"]
    _valid_for(BOOKING, orjson.loads(arguments))
    required = _chat(gw, tools=[tool], tool_choice="required")["choices"][0]["message"]["tool_calls"][0]
    _valid_for(BOOKING, orjson.loads(required["function"]["arguments"]))


def test_structured_output_through_the_sdks_parse(client: openai.OpenAI) -> None:
    from pydantic import BaseModel

    class Step(BaseModel):
        explanation: str
        output: int

    class Answer(BaseModel):
        steps: list[Step]
        final: str
        confidence: float

    out = client.chat.completions.parse(model="demo-chat", messages=CHAT, response_format=Answer)  # type: ignore[arg-type]
    parsed = out.choices[0].message.parsed
    assert isinstance(parsed, Answer) and parsed.steps


def test_json_schema_and_json_object(gw: Gateway) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "booking", "schema": BOOKING, "strict": True}}
    content = _chat(gw, response_format=fmt)["choices"][0]["message"]["content"]
    _valid_for(BOOKING, orjson.loads(content))
    as_object = _chat(gw, response_format={"type": "json_object"})["choices"][0]["message"]["content"]
    assert isinstance(orjson.loads(as_object), dict)


def test_n_choices(gw: Gateway, client: openai.OpenAI) -> None:
    body = _chat(gw, n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 3
    chunks = _chat_stream(gw, n=2, stream_options={"include_usage": True})
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    completions = client.completions.with_raw_response.create(model="demo-chat", prompt=["a", "b"], n=2)
    assert [c["index"] for c in validate("CreateCompletionResponse", orjson.loads(completions.content))["choices"]] \
        == [0, 1, 2, 3]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo-chat", messages=CHAT, n=0)  # type: ignore[arg-type]


def test_max_tokens_cuts_the_answer(gw: Gateway) -> None:
    choice = _chat(gw, max_completion_tokens=3)["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["message"]["content"].split()) == 3


def test_logprobs(gw: Gateway, client: openai.OpenAI) -> None:
    choice = _chat(gw, logprobs=True, top_logprobs=2)["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    chunks = _chat_stream(gw, logprobs=True, top_logprobs=1)
    assert any(c["choices"][0]["logprobs"] for c in chunks if c["choices"])
    out = client.chat.completions.create(model="demo-chat", messages=CHAT, logprobs=True)  # type: ignore[arg-type]
    assert out.choices[0].logprobs and out.choices[0].logprobs.content
    legacy = client.completions.with_raw_response.create(model="demo-chat", prompt="hi", logprobs=2)
    logprobs = validate("CreateCompletionResponse", orjson.loads(legacy.content))["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo-chat", messages=CHAT, top_logprobs=2)  # type: ignore[arg-type]
