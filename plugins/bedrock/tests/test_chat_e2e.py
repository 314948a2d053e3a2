"""Chat through the gateway to the fake Bedrock, driven by the official OpenAI SDK."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from bedrock_helpers import CLAUDE, CLIENT_KEY, assert_no_secrets, config_yaml, post, sse_json, validate, wait_access
from fakes.bedrock import FakeBedrock

from proxy.testing import Gateway


def test_chat_basic(client: openai.OpenAI, fake: FakeBedrock, gw: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}]},
        ],
        max_tokens=50, temperature=0.3, top_p=0.9, stop=["END"], seed=7, user="u1", presence_penalty=0.1,
    )
    body = validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from fake Bedrock!"
    assert completion.choices[0].finish_reason == "stop"
    assert body["choices"][0]["message"]["refusal"] is None and body["choices"][0]["logprobs"] is None
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    assert completion.usage.completion_tokens == 7 and completion.usage.total_tokens == 18
    seen = fake.requests[-1]
    assert seen.raw_path == "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse"
    assert seen.access_key == "AKIDTEST"
    sent = seen.json
    assert "modelId" not in sent
    assert sent["system"] == [{"text": "Be brief."}, {"text": "Answer in English."}]
    assert sent["messages"] == [{"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]}]
    assert sent["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.3, "topP": 0.9, "stopSequences": ["END"]}
    record = wait_access(gw)[-1]
    assert record["provider"] == "bedrock" and record["tokens_in"] == 11 and record["tokens_out"] == 7
    assert_no_secrets(gw.log_text, raw.http_response.content)


def test_chat_stream(client: openai.OpenAI, fake: FakeBedrock, gw: Gateway) -> None:
    stream = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake Bedrock!"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
    assert fake.requests[-1].raw_path.endswith("%3A0/converse-stream")
    assert wait_access(gw)[-1]["tokens_in"] == 11


def test_stream_raw_chunks_conform(gw: Gateway) -> None:
    resp = post(gw.base_url, "/chat/completions",
                {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    chunks, done, errors = sse_json(resp.body)
    assert done and not errors
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert all(c["choices"] for c in chunks)  # no usage chunk unless asked
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
     ("model_context_window_exceeded", "length"), ("content_filtered", "content_filter"),
     ("guardrail_intervened", "content_filter"), ("tool_use", "tool_calls")],
)
@pytest.mark.parametrize("stream", [False, True])
def test_every_stop_reason(client: openai.OpenAI, stop: str, finish: str, stream: bool) -> None:
    messages = [{"role": "user", "content": f"go [[stop:{stop}]]"}]
    if stream:
        chunks = list(client.chat.completions.create(model="claude", messages=messages, stream=True))
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [finish]
    else:
        assert client.chat.completions.create(model="claude", messages=messages).choices[0].finish_reason == finish


def test_cache_tokens_reported(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "go [[cache:1]]"}])
    usage = validate("CreateChatCompletionResponse", raw.http_response.json())["usage"]
    assert usage["prompt_tokens"] == 11 + 5 + 3
    assert usage["prompt_tokens_details"]["cached_tokens"] == 5
    assert usage["total_tokens"] == 26


def test_model_id_encoding_for_arn(fake: FakeBedrock, make_gateway, client: openai.OpenAI) -> None:
    from bedrock_helpers import config_yaml

    arn = "arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/abc123"
    route = f"  - model: arn\n    to: {{provider: bedrock, model: \"{arn}\"}}\n"
    gw = make_gateway(config_yaml(fake.url, routes=route))
    with openai.OpenAI(base_url=gw.base_url, api_key=client.api_key, max_retries=0) as c:
        c.chat.completions.create(model="arn", messages=[{"role": "user", "content": "Hi"}])
    assert fake.requests[-1].raw_path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse"
    )
    assert fake.requests[-1].access_key == "AKIDTEST"  # the signature matched the double-encoded path


def test_claude_model_id_constant() -> None:
    assert CLAUDE.endswith("-v1:0")


async def test_async_sdk_stream_and_embeddings(gw: Gateway) -> None:
    from bedrock_helpers import CLIENT_KEY

    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "Hi"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "Hello from fake Bedrock!"
        out = await client.embeddings.create(model="titan", input=["a", "b"])
        assert [d.index for d in out.data] == [0, 1] and len(out.data[0].embedding) == 8


def test_chat_and_stream_on_the_aiohttp_transport(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(fake.url, provider_extra="    transport: aiohttp\n"))  # type: ignore[attr-defined]
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        out = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Hi"}])
        assert out.choices[0].message.content == "Hello from fake Bedrock!"
        chunks = list(client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "Hi"}], stream=True,
            stream_options={"include_usage": True},
        ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from fake Bedrock!"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
    assert fake.requests[-1].access_key == "AKIDTEST"
