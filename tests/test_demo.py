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
