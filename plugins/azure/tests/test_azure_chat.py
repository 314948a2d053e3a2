"""Azure OpenAI through the gateway, driven by the official OpenAI SDK."""

from __future__ import annotations

import openai
import pytest
from azure_support import CLIENT_KEY, UPSTREAM_KEY, access_record, raw_post, sse_payloads
from openapi_check import validate

from proxy.testing import Gateway


def config(url: str, *, extra: str = "", mode: str = "") -> str:
    return f"""
clients:
  keys:
    - name: team-a
      key: {CLIENT_KEY}
providers:
  azure:
    type: azure
    base_url: {url}
    api_key: ${{AZURE_KEY}}
    api_version: "2024-10-21"
{extra}
routes:
  - model: gpt-4o
    to: {{provider: azure, model: prod-gpt4o}}
  - model: text-embedding-3-small
    to: {{provider: azure, model: prod-embed}}
  - model: missing
    to: {{provider: azure, model: no-such-deployment}}
"""


ENV = {"AZURE_KEY": UPSTREAM_KEY}
HELLO = [{"role": "user", "content": "hello"}]


def test_chat_goes_to_the_deployment_with_api_version_and_api_key(azure) -> None:
    state, url = azure
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        reply = client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices[0].message.content == "Hello from Azure"
        seen = state.seen()
        assert seen["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
        assert seen["query"] == {"api-version": "2024-10-21"}
        assert seen["headers"]["api-key"] == UPSTREAM_KEY
        assert "Authorization" not in seen["headers"]  # the client's key stays at the gateway
        assert CLIENT_KEY not in str(seen["headers"])
        record = access_record(gw)[-1]
        assert (record["provider"], record["upstream_model"], record["status"]) == ("azure", "prod-gpt4o", 200)
        assert (record["tokens_in"], record["tokens_out"]) == (9, 4)


def test_stream_drops_the_prompt_filter_chunk_by_default(azure) -> None:
    state, url = azure
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
        assert chunks and all(c.choices for c in chunks)  # choices[0] works on every chunk
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.strip() == "Hello from Azure"
        assert chunks[-1].choices[0].finish_reason == "stop"
        # content_filter_results are Azure's extra, kept on the choices
        assert chunks[1].choices[0].model_extra["content_filter_results"]["hate"]["severity"] == "safe"
        # the gateway asked for usage (for the log) and hid it from a client that did not
        assert state.seen()["body"]["stream_options"] == {"include_usage": True}
        assert (access_record(gw)[-1]["tokens_in"]) == 9

        status, _, body = raw_post(
            gw.base_url + "/chat/completions",
            {"model": "gpt-4o", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
            {"Authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert status == 200
        payloads = sse_payloads(body)
        assert payloads[-1] == "[DONE]"
        for chunk in payloads[:-1]:
            validate("CreateChatCompletionStreamResponse", chunk)
            assert "prompt_filter_results" not in chunk
        assert payloads[-2]["usage"]["total_tokens"] == 13 and payloads[-2]["choices"] == []


def test_stream_merges_prompt_filter_results_when_asked(azure) -> None:
    _, url = azure
    with Gateway(config(url, extra="    prompt_filter_results: merge"), env=ENV) as gw:
        status, _, body = raw_post(
            gw.base_url + "/chat/completions",
            {"model": "gpt-4o", "messages": HELLO, "stream": True},
            {"Authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert status == 200
        chunks = sse_payloads(body)[:-1]
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
            assert chunk["choices"] and chunk["id"] == "chatcmpl-azure-s"
        assert chunks[0]["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("prompt_filter_results" not in c for c in chunks[1:])


def test_async_filter_annotation_chunks_become_valid_chunks(azure) -> None:
    _, url = azure
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        status, _, body = raw_post(
            gw.base_url + "/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "annotate"}], "stream": True},
            {"Authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert status == 200
        chunks = sse_payloads(body)[:-1]
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
        annotation = chunks[-1]
        assert annotation["id"] == "chatcmpl-azure-s" and annotation["model"] == "gpt-4o-2024-08-06"
        assert annotation["choices"][0]["delta"] == {}
        assert annotation["choices"][0]["content_filter_results"]["violence"]["severity"] == "safe"
        # and the SDK reads it like any chunk
        streamed = list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "annotate"}], stream=True
            )
        )
        assert all(c.choices[0].delta is not None for c in streamed)


def test_legacy_completions_stream_drops_the_quirk_too(azure) -> None:
    _, url = azure
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        done = client.completions.create(model="gpt-4o", prompt="hi")
        assert done.choices[0].text == "Hello from Azure"
        chunks = list(client.completions.create(model="gpt-4o", prompt="hi", stream=True))
        assert all(c.choices for c in chunks)
        assert "".join(c.choices[0].text for c in chunks).strip() == "Hello from Azure"


def test_tools_round_trip(azure) -> None:
    state, url = azure
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        reply = client.chat.completions.create(model="gpt-4o", messages=HELLO, tools=tools, tool_choice="required")
        call = reply.choices[0].message.tool_calls[0]
        assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Paris"}')
        assert state.seen()["body"]["tools"] == tools

        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=HELLO, tools=tools, tool_choice="required", stream=True
            )
        )
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function.name == "get_weather"
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_embeddings(azure) -> None:
    state, url = azure
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        reply = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], encoding_format="float")
        assert [d.embedding for d in reply.data] == [[0.1, 0.2, 0.3]] * 2
        assert state.seen()["path"] == "/openai/deployments/prod-embed/embeddings"


def test_v1_api_mode_puts_the_deployment_in_the_body(azure) -> None:
    state, url = azure
    yaml = config(url).replace('    api_version: "2024-10-21"\n', "    api_mode: v1\n")
    with Gateway(yaml, env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        reply = client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices[0].message.content == "Hello from Azure"
        seen = state.seen()
        assert seen["path"] == "/openai/v1/chat/completions"
        assert seen["query"] == {}
        assert seen["body"]["model"] == "prod-gpt4o"
        assert seen["headers"]["api-key"] == UPSTREAM_KEY
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
        assert all(c.choices for c in chunks)


@pytest.mark.parametrize(
    "endpoint", ["https://my-res.openai.azure.com/", "https://my-res.cognitiveservices.azure.com/openai"]
)
def test_endpoint_forms_give_the_resource_root(endpoint: str) -> None:
    from relaygate_azure.provider import AzureProvider

    from proxy.config.options import Options

    provider = AzureProvider(
        "azure", Options({"type": "azure", "endpoint": endpoint, "api_key": "k", "api_version": "2024-10-21"})
    )
    assert provider.root == endpoint.rstrip("/").removesuffix("/openai")


def test_output_content_filter_keeps_its_finish_reason(azure) -> None:
    _, url = azure
    cut = [{"role": "user", "content": "filter the answer"}]
    with Gateway(config(url), env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        reply = client.chat.completions.create(model="gpt-4o", messages=cut)
        assert reply.choices[0].finish_reason == "content_filter"
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=cut, stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert chunks[-1].choices[0].model_extra["content_filter_results"]["violence"]["filtered"] is True


def test_v1_api_mode_passes_other_routes_through(azure) -> None:
    state, url = azure
    yaml = (
        config(url).replace('    api_version: "2024-10-21"\n', "    api_mode: v1\n") + "  - model: '*'\n    to: azure\n"
    )
    with Gateway(yaml, env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        assert list(client.files.list(purpose="batch")) == []
        seen = state.seen()
        assert seen["path"] == "/openai/v1/files" and seen["query"] == {"purpose": "batch"}
        assert seen["headers"]["api-key"] == UPSTREAM_KEY and "Authorization" not in seen["headers"]


def test_the_v1_base_url_from_azures_guide_works_as_it_is(azure) -> None:
    """`…/openai/v1/` with no api_version and no api_mode, as Azure's v1 guide writes it for OpenAI clients."""
    state, url = azure
    yaml = config(f"{url}/openai/v1/").replace('    api_version: "2024-10-21"\n', "")
    with Gateway(yaml, env=ENV) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as client:
        assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content
        seen = state.seen()
        assert seen["path"] == "/openai/v1/chat/completions" and seen["body"]["model"] == "prod-gpt4o"
