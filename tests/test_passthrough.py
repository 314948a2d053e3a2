"""Pass-through: the client's bytes go upstream untouched unless the route changes the model."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, access_records, config_yaml, raw, sse_data
from fakes.openai_upstream import AUDIO_BYTES, FakeOpenAI
from openapi_check import validate

from proxy.testing import Gateway

ROUTES = (
    "  - {model: my-alias, to: {provider: up, model: real-model}}\n"
    "  - {model: \"tmpl-*\", to: {provider: up, model: \"prefix-{model}\"}}\n"
    "  - {model: \"*\", to: up}\n"
)

# Odd but valid JSON: key order, spacing, escapes and number forms a re-encoder would change.
ODD_CHAT = (
    b'{ "messages" : [ {"content": "caf\\u00e9 \\ud83d\\ude00 \\/ 1e3", "role":"user"} ],\n'
    b'  "temperature": 1.0, "model":"gpt-4o", "max_tokens": 10, "metadata": {"z": "1", "a": "2"} }'
)


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(config_yaml(upstream.url, routes=ROUTES))


def test_chat_bytes_unchanged_when_model_unchanged(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.base_url}/chat/completions", ODD_CHAT)
    assert resp.status == 200, resp.body
    validate("CreateChatCompletionResponse", resp.json)
    assert upstream.last("/v1/chat/completions").body == ODD_CHAT


@pytest.mark.parametrize("path", ["embeddings", "completions"])
def test_other_model_endpoints_bytes_unchanged(path: str, gw: Gateway, upstream: FakeOpenAI) -> None:
    body = (b'{"input": ["a",  "b"], "model": "text-embedding-3-small", "encoding_format": "float"}'
            if path == "embeddings" else b'{"prompt": "x\\ty",   "model": "gpt-3.5-turbo-instruct"}')
    resp = raw("POST", f"{gw.base_url}/{path}", body)
    assert resp.status == 200, resp.body
    validate("CreateEmbeddingResponse" if path == "embeddings" else "CreateCompletionResponse", resp.json)
    assert upstream.last(f"/v1/{path}").body == body


def test_route_names_upstream_model(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.base_url}/chat/completions", ODD_CHAT.replace(b'"gpt-4o"', b'"my-alias"'))
    assert resp.status == 200, resp.body
    sent = upstream.last().json
    assert sent["model"] == "real-model"
    original = orjson.loads(ODD_CHAT)
    assert {k: v for k, v in sent.items() if k != "model"} == {k: v for k, v in original.items() if k != "model"}
    record = access_records(gw, 1)[-1]
    assert record["model"] == "my-alias" and record["upstream_model"] == "real-model"


def test_model_template(gw: Gateway, upstream: FakeOpenAI) -> None:
    body = {"model": "tmpl-small", "messages": [{"role": "user", "content": "x"}]}
    assert raw("POST", f"{gw.base_url}/chat/completions", orjson.dumps(body)).status == 200
    assert upstream.last().json["model"] == "prefix-tmpl-small"


def test_stream_passes_events_through(gw: Gateway, upstream: FakeOpenAI) -> None:
    body = b'{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},' \
           b' "messages": [{"role": "user", "content": "x y"}]}'
    resp = raw("POST", f"{gw.base_url}/chat/completions", body)
    # The client asked for usage itself: nothing to add, so its bytes go as they are.
    assert upstream.last().body == body
    events = sse_data(resp.body)
    assert events[-1] == b"[DONE]"
    chunks = [validate("CreateChatCompletionStreamResponse", orjson.loads(e)) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])


def test_moderations_forwarded_byte_for_byte(gw: Gateway, upstream: FakeOpenAI) -> None:
    body = b'{"input":  "I want to hug you", "model": "omni-moderation-latest"}'
    resp = raw("POST", f"{gw.base_url}/moderations", body)
    assert resp.status == 200, resp.body
    assert resp.json["results"][0]["flagged"] is False
    assert resp.header("x-request-id")
    recorded = upstream.last("/v1/moderations")
    assert recorded.body == body and recorded.method == "POST"


def test_passthrough_route_rewrites_model(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.base_url}/moderations", b'{"input": "x", "model": "my-alias"}')
    assert resp.status == 200
    assert upstream.last("/v1/moderations").json == {"input": "x", "model": "real-model"}


def test_binary_response_relayed(gw: Gateway, upstream: FakeOpenAI) -> None:
    body = b'{"model": "gpt-4o-mini-tts", "input": "hello", "voice": "alloy"}'
    resp = raw("POST", f"{gw.base_url}/audio/speech", body)
    assert resp.status == 200
    assert resp.header("content-type") == "audio/mpeg"
    assert resp.body == AUDIO_BYTES
    assert upstream.last("/v1/audio/speech").body == body


def test_get_with_query_forwarded(gw: Gateway, upstream: FakeOpenAI) -> None:
    query = "purpose=batch&limit=2&after=file-%2Fx%26y%3Dz"
    resp = raw("GET", f"{gw.base_url}/files?{query}")
    assert resp.status == 200, resp.body
    # Percent-encoded delimiters stay encoded: decoding them would split or merge parameters.
    assert resp.json["query"] == {"purpose": "batch", "limit": "2", "after": "file-/x&y=z"}
    recorded = upstream.last("/v1/files")
    assert recorded.method == "GET"
    assert parse_qsl(recorded.query, strict_parsing=True) == parse_qsl(query, strict_parsing=True)
    assert recorded.body == b""


def test_model_restricted_key_may_not_use_model_less_routes(gw: Gateway, upstream: FakeOpenAI) -> None:
    """A key limited to some models must not reach files/batches on the gateway's credentials."""
    resp = raw("GET", f"{gw.base_url}/files", key=LIMITED_KEY)
    assert resp.status == 403
    assert resp.json["error"]["type"] == "invalid_request_error"
    validate("ErrorResponse", resp.json)
    # With a model it is allowed inside, and refused outside, the key's globs.
    allowed = raw("POST", f"{gw.base_url}/moderations", orjson.dumps({"model": "gpt-4o-mini", "input": "x"}),
                  key=LIMITED_KEY)
    assert allowed.status == 200, allowed.body
    refused = raw("POST", f"{gw.base_url}/moderations", orjson.dumps({"model": "o3", "input": "x"}), key=LIMITED_KEY)
    assert refused.status == 403
    assert [r.path for r in upstream.requests] == ["/v1/moderations"]
    # An unrestricted key still reaches them.
    assert raw("GET", f"{gw.base_url}/files").status == 200


def test_passthrough_to_a_provider_that_cannot_serve_it_is_400_unsupported_endpoint(
        upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    """Clients read a 404 as "no such model" (pydantic-ai, LangChain): the endpoint is what is unsupported."""
    gw = make_gateway(config_yaml(upstream.url, routes="  - {model: \"*\", to: demo}\n"))
    resp = raw("POST", f"{gw.base_url}/moderations", b'{"input": "x"}')
    assert resp.status == 400
    assert resp.json["error"]["code"] == "unsupported_endpoint"
    validate("ErrorResponse", resp.json)
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
        assert info.value.code == "unsupported_endpoint"
    assert upstream.requests == []


def test_openai_prefix_alias(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("POST", f"{gw.url}/openai/v1/chat/completions", ODD_CHAT)
    assert resp.status == 200
    assert upstream.last().body == ODD_CHAT


def test_multipart_upload_forwarded_byte_for_byte(gw: Gateway, upstream: FakeOpenAI) -> None:
    boundary = "----relaygate-test-boundary"
    audio = bytes(range(256)) * 8
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n"
            "Content-Type: audio/mpeg\r\n\r\n").encode() + audio + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    resp = raw("POST", f"{gw.base_url}/audio/transcriptions", body, headers={"Content-Type": content_type})
    assert resp.status == 200, resp.body
    assert resp.json == {"text": f"whisper-1 heard {len(audio)} bytes"}
    recorded = upstream.last("/v1/audio/transcriptions")
    assert recorded.body == body and recorded.headers["Content-Type"] == content_type


def test_path_forwarded_as_the_client_encoded_it(gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("GET", f"{gw.base_url}/files/file-a%2Fb%20c")
    assert resp.status == 200, resp.body
    assert resp.json["id"] == "file-a/b c"
    assert upstream.last().raw_path == "/v1/files/file-a%2Fb%20c"
    deleted = raw("DELETE", f"{gw.base_url}/files/file-x")
    assert deleted.status == 200, deleted.body
    assert deleted.json == {"id": "file-x", "object": "file", "deleted": True}
    assert upstream.last().method == "DELETE"


@pytest.mark.parametrize("path", ["/v1/../admin", "/v1/files/../../admin", "/v1/./files", "/v1/files/%2e%2e/x",
                                  "/v1/files/a%2F..%2F..%2Fadmin"])
def test_dot_segments_never_leave_the_base_url(path: str, gw: Gateway, upstream: FakeOpenAI) -> None:
    """An upstream would resolve `..` against the provider's base URL and escape /v1."""
    resp = raw("GET", gw.url + path)
    assert resp.status == 404, resp.body
    assert resp.json["error"]["code"] == "unknown_url"
    validate("ErrorResponse", resp.json)
    assert upstream.requests == []
