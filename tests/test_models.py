"""`/v1/models`: literal routes, upstream listings under glob routes, per-key filtering."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, config_yaml, raw
from fakes.openai_upstream import Behaviour, FakeOpenAI
from openapi_check import validate

from proxy.testing import Gateway

ROUTES = (
    "  - {model: my-alias, to: {provider: up, model: real-model}}\n"
    "  - {model: \"demo-*\", to: demo}\n"
    "  - {model: \"oai/*\", to: {provider: up, model: \"{model}\"}}\n"
    "  - {model: \"gpt-*\", to: up}\n"
)


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(config_yaml(upstream.url, routes=ROUTES))


def _ids(gw: Gateway, key: str) -> list[str]:
    resp = raw("GET", f"{gw.base_url}/models", key=key)
    assert resp.status == 200, resp.body
    validate("ListModelsResponse", resp.json)
    ids = [m["id"] for m in resp.json["data"]]
    assert len(ids) == len(set(ids)), "no duplicates"
    return ids


def test_listing_combines_routes_and_upstream_listings(gw: Gateway) -> None:
    ids = _ids(gw, CLIENT_KEY)
    assert "my-alias" in ids
    assert {"demo-chat", "demo-embed"} <= set(ids)
    # Glob `gpt-*` shows what the upstream has that the glob matches, and nothing else.
    assert {"gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct"} <= set(ids)
    assert "text-embedding-3-small" not in ids and "real-model" not in ids


def test_listing_filtered_by_key(gw: Gateway) -> None:
    assert sorted(_ids(gw, LIMITED_KEY)) == ["demo-chat", "demo-embed", "gpt-4o", "gpt-4o-mini"]


def test_retrieve(gw: Gateway) -> None:
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        for name in ("my-alias", "gpt-4o", "demo-chat"):
            resp = client.models.with_raw_response.retrieve(name)
            validate("Model", orjson.loads(resp.content))
            assert resp.parse().id == name
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-does-not-exist")
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("claude-3")


def test_listing_is_cached(gw: Gateway, upstream: FakeOpenAI) -> None:
    for _ in range(3):
        _ids(gw, CLIENT_KEY)
    assert len([r for r in upstream.requests if r.path == "/v1/models"]) == 1


def test_upstream_listing_failure_still_lists_routes(upstream: FakeOpenAI,
                                                      make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, routes=ROUTES), env={"UPSTREAM_KEY": "sk-wrong-upstream"})
    ids = _ids(gw, CLIENT_KEY)
    assert "my-alias" in ids and "demo-chat" in ids
    assert not any(i.startswith("gpt-") for i in ids)


def test_open_gateway_lists_everything(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, clients=False, routes="  - {model: \"*\", to: up}\n"))
    resp = raw("GET", f"{gw.base_url}/models", key=None)
    assert resp.status == 200
    assert {m["id"] for m in resp.json["data"]} == set(upstream.models)
    assert "open" in gw.log_text.lower()


def test_model_fields_conform(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("unused", Behaviour())
    resp = raw("GET", f"{gw.base_url}/models", key=CLIENT_KEY)
    for model in resp.json["data"]:
        validate("Model", model)
        assert model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]
