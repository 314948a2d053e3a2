"""The official SDK (sync and async) through the gateway to the fake OpenAI upstream."""

from __future__ import annotations

import base64
import hashlib
import struct

import openai
import orjson
from core_helpers import CLIENT_KEY, access_records, post_json
from fakes.openai_upstream import EMBED_DIMS, embedding_of, image_tag
from openapi_check import validate

from proxy.testing import Gateway

# A small but real PNG as a data URL, the way vision clients send images inline.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG_1X1 * 50).decode()

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def test_chat_sync(client: openai.OpenAI, upstream, gw: Gateway) -> None:
    resp = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = resp.parse()
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    validate("CreateChatCompletionResponse", orjson.loads(resp.content))
    assert resp.headers.get("x-request-id")
    sent = upstream.last("/v1/chat/completions").json
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    record = access_records(gw, 1)[-1]
    assert record["client"] == "team-a" and record["provider"] == "up" and record["status"] == 200
    assert (record["tokens_in"], record["tokens_out"]) == (2, 3)


async def test_chat_async(gw: Gateway, upstream) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as aclient:
        completion = await aclient.chat.completions.create(
            model="gpt-4o", messages=[{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "async hi"}], temperature=0.2,
        )
    assert completion.choices[0].message.content == "Echo: async hi"
    assert upstream.last().json["temperature"] == 0.2


def _stream_text(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_stream_without_usage_hides_it_but_logs_tokens(client: openai.OpenAI, upstream, gw: Gateway) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True
    ))
    assert _stream_text(chunks) == "Echo: stream me please"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    # The gateway asked the upstream for usage, for its log.
    assert upstream.last().json["stream_options"] == {"include_usage": True}
    record = access_records(gw, 1)[-1]
    assert record["stream"] is True and (record["tokens_in"], record["tokens_out"]) == (3, 4)


def test_stream_raw_bytes_conform_and_end_with_done(gw: Gateway) -> None:
    resp = post_json(f"{gw.base_url}/chat/completions", {
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a b"}]})
    assert resp.status == 200
    assert resp.header("content-type").startswith("text/event-stream")
    events = [e for e in resp.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    for ev in events[:-1]:
        assert ev.startswith(b"data: ")
        chunk = validate("CreateChatCompletionStreamResponse", orjson.loads(ev[6:]))
        assert chunk["choices"], "no usage-only chunk when the client did not ask for one"


def test_stream_with_include_usage(client: openai.OpenAI, upstream, gw: Gateway) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count these"}], stream=True,
        stream_options={"include_usage": True},
    ))
    assert _stream_text(chunks) == "Echo: count these"
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 3)
    assert access_records(gw, 1)[-1]["tokens_out"] == 3
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))


async def test_stream_async(gw: Gateway) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "async stream"}], stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "Echo: async stream"


def test_tool_call_round_trip(client: openai.OpenAI, upstream) -> None:
    messages: list = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS,
                                           tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"echo": "weather in Paris?"}
    assert upstream.last().json["tools"] == TOOLS

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "The tool said: sunny, 21C"
    sent = upstream.last().json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[2]["tool_call_id"] == call.id


def test_tool_call_streamed(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "please use the tool"}], tools=TOOLS, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert orjson.loads(arguments) == {"echo": "please use the tool"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_vision_part_arrives_byte_identical(client: openai.OpenAI, upstream) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}}]
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])
    assert image_tag(DATA_URL) in completion.choices[0].message.content
    recorded = upstream.last()
    assert recorded.json["messages"][0]["content"] == content
    # The data URL travels as the very same bytes (no re-encoding of the base64 text).
    assert DATA_URL.encode() in recorded.body
    assert hashlib.sha256(recorded.json["messages"][0]["content"][1]["image_url"]["url"].encode()).digest() \
        == hashlib.sha256(DATA_URL.encode()).digest()


def test_embeddings_float(client: openai.OpenAI) -> None:
    resp = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["alpha", "beta"],
                                                      encoding_format="float")
    validate("CreateEmbeddingResponse", orjson.loads(resp.content))
    data = resp.parse().data
    assert [d.embedding for d in data] == [embedding_of("alpha"), embedding_of("beta")]


def test_embeddings_base64(client: openai.OpenAI, upstream) -> None:
    resp = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="gamma",
                                                      encoding_format="base64")
    body = orjson.loads(resp.content)
    raw_vector = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack(f"<{EMBED_DIMS}f", raw_vector)) == embedding_of("gamma")
    # And the SDK's own default (base64 on the wire, decoded for the caller) works end to end.
    default = client.embeddings.create(model="text-embedding-3-small", input="gamma")
    assert default.data[0].embedding == embedding_of("gamma")
    assert upstream.last().json["encoding_format"] == "base64"


def test_completions(client: openai.OpenAI, upstream) -> None:
    resp = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say this")
    validate("CreateCompletionResponse", orjson.loads(resp.content))
    assert resp.parse().choices[0].text == "Echo: Say this"
    streamed = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="two words", stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Echo: two words"
    assert all(c.usage is None for c in streamed)


def test_models_list_and_retrieve(client: openai.OpenAI, gw: Gateway, upstream) -> None:
    resp = client.models.with_raw_response.list()
    validate("ListModelsResponse", orjson.loads(resp.content))
    ids = [m.id for m in resp.parse().data]
    assert set(ids) == set(upstream.models)
    raw_model = client.models.with_raw_response.retrieve("gpt-4o")
    validate("Model", orjson.loads(raw_model.content))
    assert raw_model.parse().id == "gpt-4o"
    # Upstream auth travelled with the listing request, as for any other.
    assert upstream.last("/v1/models").headers["Authorization"] == f"Bearer {upstream.api_key}"


async def test_models_async(gw: Gateway) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as aclient:
        page = await aclient.models.list()
        assert "gpt-4o-mini" in [m.id for m in page.data]
        model = await aclient.models.retrieve("gpt-4o-mini")
        assert model.id == "gpt-4o-mini"
