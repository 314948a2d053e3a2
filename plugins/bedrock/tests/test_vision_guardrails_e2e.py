"""Images (data URLs, gateway-fetched URLs behind the SSRF guard) and route guardrails on both provider types."""

from __future__ import annotations

import base64
from collections.abc import Callable

import openai
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from bedrock_helpers import CLAUDE, CLIENT_KEY, PNG, assert_no_secrets, config_yaml, post, validate_error
from fakes.bedrock import FakeBedrock

from proxy.testing import FakeServer, Gateway

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 40
GUARDRAIL = ("    guardrail: {id: gr12345, version: \"3\", trace: enabled, tag_suffix: xyz, "
             "stream_processing_mode: async}\n")


def _image_message(url: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize(("declared", "data", "fmt"), [("png", PNG, "png"), ("jpg", JPEG, "jpeg")])
def test_data_url_image(client: openai.OpenAI, fake: FakeBedrock, declared: str, data: bytes, fmt: str) -> None:
    url = f"data:image/{declared};base64," + base64.b64encode(data).decode()
    out = client.chat.completions.create(model="claude", messages=_image_message(url))
    assert out.choices[0].message.content == f"I see a {fmt} image of {len(data)} bytes."
    block = fake.requests[-1].json["messages"][0]["content"][1]
    assert block["image"]["format"] == fmt


def test_data_url_that_is_not_an_image(client: openai.OpenAI, fake: FakeBedrock) -> None:
    url = "data:image/png;base64," + base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    with pytest.raises(openai.BadRequestError, match="PNG, JPEG, GIF or WebP"):
        client.chat.completions.create(model="claude", messages=_image_message(url))
    assert fake.requests == []


def _image_host() -> web.Application:
    app = web.Application()

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    app.router.add_get("/cat.png", image)
    return app


def test_image_url_refused_by_default(client: openai.OpenAI, fake: FakeBedrock) -> None:
    with FakeServer(_image_host()) as host, pytest.raises(openai.BadRequestError, match="not fetched"):
        client.chat.completions.create(model="claude", messages=_image_message(f"{host.url}/cat.png"))
    assert fake.requests == []


def test_image_url_fetch_refuses_loopback(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(fake.url, provider_extra="    fetch_images: true\n"))
    with FakeServer(_image_host()) as host:
        resp = post(gw.base_url, "/chat/completions",
                    {"model": "claude", "messages": _image_message(f"{host.url}/cat.png")})
    assert resp.status == 400
    assert "private or reserved" in validate_error(resp.json)["message"]
    assert fake.requests == []


def test_image_url_fetched_when_allowed(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    extra = "    fetch_images: true\n    image_fetch: {max_bytes: 100000, timeout: 5, allow_private: true}\n"
    gw = make_gateway(config_yaml(fake.url, provider_extra=extra))
    with FakeServer(_image_host()) as host, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY) as c:
        out = c.chat.completions.create(model="claude", messages=_image_message(f"{host.url}/cat.png"))
    assert out.choices[0].message.content == f"I see a png image of {len(PNG)} bytes."
    assert base64.b64decode(fake.requests[-1].json["messages"][0]["content"][1]["image"]["source"]["bytes"]) == PNG


def test_s6_an_image_named_many_times_is_fetched_once(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    extra = "    fetch_images: true\n    image_fetch: {allow_private: true}\n"
    gw = make_gateway(config_yaml(fake.url, provider_extra=extra))
    hits: list[str] = []
    with FakeServer(_counted_image_host(hits)) as host:
        url = f"{host.url}/cat.png"
        parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(64)]
        resp = post(gw.base_url, "/chat/completions",
                    {"model": "claude", "messages": [{"role": "user", "content": parts}]})
    assert resp.status == 200
    assert hits == ["/cat.png"]
    blocks = fake.requests[-1].json["messages"][0]["content"]
    assert len(blocks) == 64 and all(base64.b64decode(b["image"]["source"]["bytes"]) == PNG for b in blocks)


def test_s6_more_distinct_images_than_the_cap_are_refused_unfetched(
    fake: FakeBedrock, make_gateway: Callable[..., Gateway]
) -> None:
    extra = "    fetch_images: true\n    image_fetch: {allow_private: true, max_images: 3}\n"
    gw = make_gateway(config_yaml(fake.url, provider_extra=extra))
    hits: list[str] = []
    with FakeServer(_counted_image_host(hits)) as host:
        parts = [{"type": "image_url", "image_url": {"url": f"{host.url}/cat.png?{i}"}} for i in range(4)]
        resp = post(gw.base_url, "/chat/completions",
                    {"model": "claude", "messages": [{"role": "user", "content": parts}]})
    assert resp.status == 400
    assert validate_error(resp.json)["code"] == "too_many_images"
    assert hits == [] and fake.requests == []


def _counted_image_host(hits: list[str]) -> web.Application:
    """`_image_host`, recording each path it serves in `hits`."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        hits.append(request.path)
        return await handler(request)

    app = _image_host()
    app.middlewares.append(count)
    return app


# ---------------------------------------------------------------- guardrails


def test_converse_guardrail(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    routes = "  - model: guarded\n    to: {provider: bedrock, model: anthropic.claude-3-haiku-20240307-v1:0}\n"
    routes += GUARDRAIL
    gw = make_gateway(config_yaml(fake.url, routes=routes))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        out = c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "forbidden topic"}])
        assert out.choices[0].finish_reason == "content_filter"
        assert fake.requests[-1].json["guardrailConfig"] == {
            "guardrailIdentifier": "gr12345", "guardrailVersion": "3", "trace": "enabled"}
        chunks = list(c.chat.completions.create(model="guarded", stream=True,
                                                messages=[{"role": "user", "content": "forbidden topic"}]))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert fake.requests[-1].json["guardrailConfig"]["streamProcessingMode"] == "async"
        # A client cannot smuggle its own guardrail settings past the route's.
        out = c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"amazon-bedrock-guardrailConfig": {"tagSuffix": "evil"},
                                                    "guardrailConfig": {"guardrailIdentifier": "none"}})
        assert fake.requests[-1].json["guardrailConfig"]["guardrailIdentifier"] == "gr12345"


def test_openai_endpoint_guardrail_headers(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    routes = "  - model: guarded-oss\n    to: {provider: bedrock-oai, model: openai.gpt-oss-20b-1:0}\n" + GUARDRAIL
    gw = make_gateway(config_yaml(fake.url, routes=routes))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        out = c.chat.completions.create(
            model="guarded-oss", messages=[{"role": "user", "content": "hi"}],
            extra_body={"amazon-bedrock-guardrailConfig": {"tagSuffix": "client-chosen"}},
            extra_headers={"X-Amzn-Bedrock-GuardrailIdentifier": "client-gr", "X-Amzn-Bedrock-Trace": "disabled"},
        )
    assert out.choices[0].message.content == "blocked by guardrail"
    seen = fake.requests[-1]
    assert seen.headers["X-Amzn-Bedrock-GuardrailIdentifier"] == "gr12345"
    assert seen.headers["X-Amzn-Bedrock-GuardrailVersion"] == "3"
    assert seen.headers["X-Amzn-Bedrock-Trace"] == "ENABLED"
    assert seen.headers["Authorization"] == "Bearer " + fake.api_key
    assert seen.json["amazon-bedrock-guardrailConfig"] == {"tagSuffix": "xyz"}
    assert seen.json["model"] == "openai.gpt-oss-20b-1:0"
    assert_no_secrets(gw.log_text, out.model_dump_json())


def test_openai_endpoint_guardrail_without_tag_drops_client_field(
    fake: FakeBedrock, make_gateway: Callable[..., Gateway]
) -> None:
    routes = ("  - model: guarded-oss\n    to: {provider: bedrock-oai, model: openai.gpt-oss-20b-1:0}\n"
              "    guardrail: {id: gr1, version: DRAFT}\n")
    gw = make_gateway(config_yaml(fake.url, routes=routes))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        c.chat.completions.create(model="guarded-oss", messages=[{"role": "user", "content": "hi"}],
                                  extra_body={"amazon-bedrock-guardrailConfig": {"tagSuffix": "client"}})
    seen = fake.requests[-1]
    assert "amazon-bedrock-guardrailConfig" not in seen.json
    assert seen.headers["X-Amzn-Bedrock-GuardrailVersion"] == "DRAFT"
    assert "X-Amzn-Bedrock-Trace" not in seen.headers


def test_openai_endpoint_without_guardrail_adds_nothing(fake: FakeBedrock, gw: Gateway) -> None:
    resp = post(gw.base_url, "/chat/completions",
                {"model": "gpt-oss", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert resp.status == 200
    seen = fake.requests[-1]
    assert seen.raw_path == "/openai/v1/chat/completions"
    assert not any(k.lower().startswith("x-amzn-bedrock") for k in seen.headers)


@pytest.mark.parametrize(("written", "header", "converse"), [
    ("ENABLED", "ENABLED", "enabled"), ("enabled_full", "ENABLED_FULL", "enabled_full"),
    ("Disabled", "DISABLED", "disabled"),
])
def test_guardrail_trace_in_any_case_goes_out_in_each_wires_case(
    written: str, header: str, converse: str, fake: FakeBedrock, make_gateway: Callable[..., Gateway]
) -> None:
    """AWS writes the header's values upper-case, Converse's field lower-case; the YAML may use either."""
    routes = (f"  - model: guarded-oss\n    to: {{provider: bedrock-oai, model: openai.gpt-oss-20b-1:0}}\n"
              f"    guardrail: {{id: gr1, version: DRAFT, trace: {written}, stream_processing_mode: ASYNC}}\n"
              f"  - model: guarded\n    to: {{provider: bedrock, model: {CLAUDE}}}\n"
              f"    guardrail: {{id: gr1, version: DRAFT, trace: {written}, stream_processing_mode: ASYNC}}\n")
    gw = make_gateway(config_yaml(fake.url, routes=routes))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        c.chat.completions.create(model="guarded-oss", messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1].headers["X-Amzn-Bedrock-Trace"] == header
        list(c.chat.completions.create(model="guarded", stream=True, messages=[{"role": "user", "content": "hi"}]))
    config = fake.requests[-1].json["guardrailConfig"]
    assert config["trace"] == converse and config["streamProcessingMode"] == "async"
