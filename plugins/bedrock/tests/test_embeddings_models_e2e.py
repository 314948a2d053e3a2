"""Embeddings (Cohere, Titan; float and base64) and the models listing, through the gateway."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable

import openai
import pytest
from bedrock_helpers import CLIENT_KEY, config_yaml, post, validate, validate_error
from fakes.bedrock import FakeBedrock

from proxy.testing import Gateway


@pytest.mark.parametrize("model", ["cohere", "titan"])
def test_embeddings_float_and_base64(client: openai.OpenAI, model: str) -> None:
    raw = client.embeddings.with_raw_response.create(model=model, input=["hello world", "second text"],
                                                     encoding_format="float")
    floats = validate("CreateEmbeddingResponse", raw.http_response.json())
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert len(floats["data"][0]["embedding"]) == 8
    raw = client.embeddings.with_raw_response.create(model=model, input=["hello world", "second text"],
                                                     encoding_format="base64")
    b64 = raw.http_response.json()  # the spec types `embedding` as an array only; OpenAI sends base64 text
    assert isinstance(b64["data"][1]["embedding"], str)
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][1]["embedding"]))
    assert decoded == pytest.approx(floats["data"][1]["embedding"], rel=1e-6)
    # The SDK's own default (base64, decoded by the SDK) gives the same numbers.
    sdk = client.embeddings.create(model=model, input="second text")
    assert sdk.data[0].embedding == pytest.approx(floats["data"][1]["embedding"], rel=1e-6)


def test_cohere_batches_and_input_type(client: openai.OpenAI, fake: FakeBedrock) -> None:
    texts = [f"text {i}" for i in range(200)]
    out = client.embeddings.create(model="cohere", input=texts, encoding_format="float",
                                   extra_body={"input_type": "search_query"})
    assert len(out.data) == 200 and [d.index for d in out.data] == list(range(200))
    # The batches go out concurrently, so they may arrive in any order.
    bodies = sorted((r.json for r in fake.requests), key=lambda b: texts.index(b["texts"][0]))
    assert [b["texts"] for b in bodies] == [texts[:96], texts[96:192], texts[192:]]
    assert {b["input_type"] for b in bodies} == {"search_query"}
    assert out.usage.prompt_tokens == 0
    assert fake.requests[0].raw_path == "/model/cohere.embed-english-v3/invoke"


def test_cohere_default_input_type_and_v4_dimensions(client: openai.OpenAI, fake: FakeBedrock) -> None:
    client.embeddings.create(model="cohere", input="x", encoding_format="float")
    assert fake.requests[-1].json["input_type"] == "search_document"
    out = client.embeddings.create(model="cohere-v4", input="x", dimensions=16, encoding_format="float")
    assert len(out.data[0].embedding) == 16 and fake.requests[-1].json["output_dimension"] == 16
    assert fake.requests[-1].raw_path == "/model/cohere.embed-v4%3A0/invoke"


def test_titan_one_call_per_text_with_usage(client: openai.OpenAI, fake: FakeBedrock, gw: Gateway) -> None:
    out = client.embeddings.create(model="titan", input=["a b c", "d e", "f"], dimensions=4,
                                   encoding_format="float", extra_body={"normalize": False})
    assert out.usage.prompt_tokens == 6 and out.usage.total_tokens == 6
    assert sorted(r.json["inputText"] for r in fake.requests) == ["a b c", "d e", "f"]
    assert all(r.json["dimensions"] == 4 and r.json["normalize"] is False for r in fake.requests)
    assert [len(d.embedding) for d in out.data] == [4, 4, 4]


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        ("titan", {"input": [1, 2, 3]}, "input"),
        ("cohere", {"input": [[1, 2], [3]]}, "input"),
        ("titan-v1", {"input": "x", "dimensions": 4}, "dimensions"),
        ("cohere", {"input": "x", "dimensions": 4}, "dimensions"),
        ("cohere", {"input": "x", "input_type": "poetry"}, "input_type"),
        ("claude", {"input": "x"}, "model"),
    ],
)
def test_embedding_bad_input(gw: Gateway, fake: FakeBedrock, model: str, body: dict, param: str) -> None:
    resp = post(gw.base_url, "/embeddings", {"model": model, **body})
    assert resp.status == 400
    assert validate_error(resp.json)["param"] == param
    assert fake.requests == []


def test_models_listing(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(fake.url, catch_all=True))  # listings show up under glob routes
    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    raw = client.models.with_raw_response.list()
    body = validate("ListModelsResponse", raw.http_response.json())
    ids = [m["id"] for m in body["data"]]
    # Text, on-demand foundation models (not the image or embedding ones, not profile-only ones) ...
    assert "anthropic.claude-3-haiku-20240307-v1:0" in ids and "amazon.nova-lite-v1:0" in ids
    assert "stability.sd3-large-v1:0" not in ids and "amazon.titan-embed-text-v2:0" not in ids
    assert "anthropic.claude-3-7-sonnet-20250219-v1:0" not in ids
    # ... and every page of inference profiles.
    for pid in ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
                "apac.amazon.nova-lite-v1:0", "global.anthropic.claude-sonnet-4-20250514-v1:0",
                "us.meta.llama3-2-1b-instruct-v1:0"):
        assert pid in ids
    owners = {m["id"]: m["owned_by"] for m in body["data"]}
    assert owners["us.anthropic.claude-3-7-sonnet-20250219-v1:0"] == "anthropic"
    assert owners["amazon.nova-lite-v1:0"] == "amazon"
    control = [r for r in fake.requests if not r.raw_path.startswith("/openai")]
    assert all(r.access_key == "AKIDTEST" for r in control)  # signed, and the signature held
    profile_pages = [r for r in control if r.raw_path.startswith("/inference-profiles")]
    assert len(profile_pages) == 3
    # Cached: a second listing does not reach the control plane again.
    count = len(fake.requests)
    client.models.list()
    assert len([r for r in fake.requests[count:] if not r.raw_path.startswith("/openai")]) == 0
    client.close()


def test_models_listing_survives_control_plane_failure(fake: FakeBedrock, make_gateway: Callable[..., Gateway]
                                                       ) -> None:
    gw = make_gateway(config_yaml(fake.url, catch_all=True), env={"BEDROCK_SECRET": "wrong-secret"})
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        ids = [m.id for m in c.models.list()]
    assert "claude" in ids  # the literal routes still list
    assert not any(i.startswith("us.") for i in ids)  # the listing failed (403), and said so
    assert "model listing failed" in gw.log_text
    assert "wrong-secret" not in gw.log_text
