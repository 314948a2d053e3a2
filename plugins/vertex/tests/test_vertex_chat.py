"""Vertex AI through the gateway, driven by the official OpenAI SDK."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from aiohttp import web
from openapi_check import validate
from relaygate_vertex.provider import VertexProvider, service_host
from vertex_support import CLIENT_KEY, HELLO, client_for, config

from proxy.config.options import Options
from proxy.testing import FakeServer, Gateway

OPENAPI = "/v1beta1/projects/my-proj-123/locations/us-central1/endpoints/openapi/chat/completions"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_chat_reaches_the_gemini_endpoint_with_a_service_account_token(google) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        reply = client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert reply.choices[0].message.content == "Hello from Gemini"
        seen = state.seen()
        assert seen["path"] == OPENAPI
        assert seen["body"]["model"] == "google/gemini-2.0-flash"
        token = seen["headers"]["Authorization"].removeprefix("Bearer ")
        assert token in state.issued and state.issue_count == 1
        assert CLIENT_KEY not in json.dumps(seen["headers"])

        client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert state.issue_count == 1  # the token is reused while it is fresh
        assert state.rejected_assertions == 0


def test_stream_and_usage(google) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        chunks = list(client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from Gemini"
        assert all(c.choices for c in chunks)  # usage was asked for the log, hidden from the client
        assert state.seen()["body"]["stream_options"] == {"include_usage": True}

        with_usage = list(
            client.chat.completions.create(
                model="gemini-2.0-flash", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
        assert with_usage[-1].usage.total_tokens == 10
        for chunk in with_usage:
            validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))


def test_tools(google) -> None:
    state, url, account = google
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        reply = client.chat.completions.create(
            model="gemini-2.0-flash", messages=HELLO, tools=tools, tool_choice="required"
        )
        assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
        assert state.seen()["body"]["tools"] == tools and state.seen()["body"]["tool_choice"] == "required"
        chunks = list(
            client.chat.completions.create(
                model="gemini-2.0-flash", messages=HELLO, tools=tools, tool_choice="required", stream=True
            )
        )
        assert chunks[0].choices[0].delta.tool_calls[0].function.arguments == '{"city":"Rome"}'
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_supported_parameters_pass_and_others_are_dropped(google) -> None:
    state, url, account = google
    supported = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "n": 1,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.1,
        "seed": 7,
        "stop": ["END"],
        "reasoning_effort": "low",
        "response_format": {"type": "json_object"},
    }
    with Gateway(config(url, account, "    keep_params: [user]")) as gw, client_for(gw) as client:
        client.chat.completions.create(
            model="gemini-2.0-flash",
            messages=HELLO,
            logit_bias={"1": 2},
            store=True,
            metadata={"a": "b"},
            parallel_tool_calls=False,
            user="someone",
            **supported,  # type: ignore[arg-type]
        )
        body = state.seen()["body"]
        assert {k: body[k] for k in supported} == supported
        assert body["user"] == "someone"  # kept by keep_params
        for dropped in ("logit_bias", "store", "metadata", "parallel_tool_calls"):
            assert dropped not in body


def test_self_deployed_endpoint_from_the_route_target(google) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        client.chat.completions.create(model="my-llama", messages=HELLO)
        assert state.seen()["path"] == OPENAPI.replace("/openapi/", "/1234567890/")
        assert state.seen()["body"]["model"] == "meta/llama-3"
        # /v1/models: Vertex cannot list, so the configured routes are what the gateway shows
        assert [m.id for m in client.models.list()] == ["my-llama"]


def test_hosts_for_regional_and_global_locations() -> None:
    assert service_host("europe-west4") == "https://europe-west4-aiplatform.googleapis.com"
    assert service_host("global") == "https://aiplatform.googleapis.com"
    provider = VertexProvider("v", Options({"type": "vertex", "project": "p-1", "location": "global"}))
    assert provider.endpoints_url == "https://aiplatform.googleapis.com/v1beta1/projects/p-1/locations/global/endpoints"
    regional = VertexProvider("v", Options({"type": "vertex", "project": "p-1", "api_version": "v1"}))
    assert regional.endpoints_url.startswith("https://us-central1-aiplatform.googleapis.com/v1/projects/p-1/")


def _image_server() -> web.Application:
    app = web.Application()

    async def cat(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    app.router.add_get("/cat.png", cat)
    return app


def test_image_urls_are_fetched_and_sent_as_data_urls(google) -> None:
    state, url, account = google
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.png"}},
    ]
    with FakeServer(_image_server) as images:
        content[1]["image_url"]["url"] = images.url + "/cat.png"
        messages = [{"role": "user", "content": content}]
        private_ok = config(url, account, "    image_fetch: {allow_private: true, max_bytes: 10000}")
        with Gateway(private_ok) as gw, client_for(gw) as client:
            client.chat.completions.create(model="gemini-2.0-flash", messages=messages)  # type: ignore[arg-type]
            parts = state.seen()["body"]["messages"][0]["content"]
            assert parts[1]["image_url"] == {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}
            assert parts[2]["image_url"] == {"url": "gs://bucket/cat.png"}  # Vertex reads gs:// itself

        with Gateway(config(url, account)) as gw, client_for(gw) as client:  # the SSRF guard is on by default
            before = len(state.requests)
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="gemini-2.0-flash", messages=messages)  # type: ignore[arg-type]
            assert info.value.code == "invalid_image_url"
            assert len(state.requests) == before  # refused before anything went to Vertex


def test_adc_from_google_application_credentials(google) -> None:
    state, url, account = google
    yaml = config(url, account).replace(f"    credentials_file: {account}\n", "")
    with Gateway(yaml, env={"GOOGLE_APPLICATION_CREDENTIALS": str(account)}) as gw, client_for(gw) as client:
        assert client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO).choices
        assert state.issue_count == 1


def test_embeddings_are_not_sent_to_vertex(google) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="gemini-embedding", input="hi")
        assert info.value.code == "unsupported_endpoint"
        assert state.requests == []


def test_token_refresh_and_chat_go_through_the_egress_proxy(google) -> None:
    """Both the google-auth token request and the Vertex call use HTTP_PROXY (and not with proxy: false)."""
    from fakes.forward_proxy import ForwardProxy

    _state, url, account = google
    with ForwardProxy() as proxy:
        with Gateway(config(url, account), env={"HTTP_PROXY": proxy.url}) as gw, client_for(gw) as client:
            reply = client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
            assert reply.choices[0].message.content == "Hello from Gemini"
        assert any(line.startswith(f"POST {url}/token ") for line in proxy.seen), proxy.seen
        assert any(line.startswith(f"POST {url}{OPENAPI} ") for line in proxy.seen), proxy.seen
        proxy.seen.clear()
        direct = config(url, account, "    proxy: false\n")
        with Gateway(direct, env={"HTTP_PROXY": proxy.url}) as gw, client_for(gw) as client:
            client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        # (the SDK itself honours HTTP_PROXY on its way to the gateway: those lines are not the gateway's)
        assert [line for line in proxy.seen if url in line] == []
