"""Bedrock's URLs and regions as AWS documents them, in either provider type."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from bedrock_helpers import AKID, CLIENT_KEY, config_yaml
from fakes.bedrock import FakeBedrock
from relaygate_bedrock.openai_endpoint import BedrockOpenAIProvider
from relaygate_bedrock.provider import BedrockProvider

from proxy.config.options import Options
from proxy.errors import ConfigError
from proxy.testing import Gateway

HELLO = [{"role": "user", "content": "hi"}]


def _converse(**block: object) -> BedrockProvider:
    return BedrockProvider("b", Options({"type": "bedrock", "access_key_id": AKID, "secret_access_key": "s",
                                         **block}, ("providers", "b")))


def _openai(**block: object) -> BedrockOpenAIProvider:
    return BedrockOpenAIProvider("o", Options({"type": "bedrock-openai", "api_key": "k", **block},
                                              ("providers", "o")))


@pytest.mark.parametrize(("url", "region"), [
    ("https://bedrock-runtime.eu-central-1.amazonaws.com", "eu-central-1"),
    ("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
    ("https://vpce-0abc-xyz.bedrock-runtime.ap-southeast-2.vpce.amazonaws.com", "ap-southeast-2"),
    ("https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1", "us-west-2"),
])
def test_converse_region_comes_from_the_endpoint_host(url: str, region: str) -> None:
    provider = _converse(endpoint_url=url)
    assert provider.region == region
    assert provider.endpoint == url.removesuffix("/openai/v1")


def test_region_from_the_environment_as_aws_sdks_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert _converse().endpoint == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert _openai().base_url == "https://bedrock-runtime.eu-west-1.amazonaws.com/openai/v1"
    monkeypatch.setenv("AWS_REGION", "ca-central-1")
    assert _converse().region == "ca-central-1"
    assert _converse(region="US-EAST-2").region == "us-east-2"


def test_a_host_that_names_no_region_needs_one() -> None:
    with pytest.raises(ConfigError, match=r"providers\.b\.region: required: the endpoint's host names none"):
        _converse(endpoint_url="https://bedrock.internal.example")
    assert _converse(endpoint_url="https://bedrock.internal.example", region="us-west-2").region == "us-west-2"


@pytest.mark.parametrize(("url", "base"), [
    ("https://bedrock-runtime.us-west-2.amazonaws.com", "https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1"),
    ("https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1/",
     "https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1"),
    ("https://bedrock-mantle.us-east-1.api.aws", "https://bedrock-mantle.us-east-1.api.aws/v1"),
    ("https://bedrock-mantle.us-east-1.api.aws/openai/v1", "https://bedrock-mantle.us-east-1.api.aws/openai/v1"),
])
@pytest.mark.parametrize("key", ["base_url", "endpoint_url"])
def test_openai_endpoint_with_or_without_openai_v1(url: str, base: str, key: str) -> None:
    assert _openai(**{key: url}).base_url == base


def test_openai_endpoint_given_a_bare_origin_reaches_openai_v1(
    fake: FakeBedrock, make_gateway: Callable[..., Gateway]
) -> None:
    yaml = config_yaml(fake.url).replace(f"base_url: {fake.url}/openai/v1", f"base_url: {fake.url}")
    gw = make_gateway(yaml)
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        assert c.chat.completions.create(model="gpt-oss", messages=HELLO).choices[0].message.content == "hello"
    assert fake.requests[-1].raw_path == "/openai/v1/chat/completions"


def test_openai_endpoint_translates_the_responses_api_unless_told_native(
    fake: FakeBedrock, make_gateway: Callable[..., Gateway]
) -> None:
    """bedrock-runtime's /openai/v1 serves chat/completions, not /responses: translated by default."""
    gw = make_gateway(config_yaml(fake.url))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        r = c.responses.create(model="gpt-oss", input="hi", store=False)
    assert r.output_text == "hello" and r.object == "response"
    assert fake.requests[-1].raw_path == "/openai/v1/chat/completions"
    assert _openai(region="us-east-1", responses="native").responses == "native"


def test_converse_given_the_openai_base_url_reaches_converse(
    fake: FakeBedrock, make_gateway: Callable[..., Gateway]
) -> None:
    yaml = config_yaml(fake.url).replace(f"endpoint_url: {fake.url}\n", f"endpoint_url: {fake.url}/openai/v1\n", 1)
    gw = make_gateway(yaml)
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        assert c.chat.completions.create(model="claude", messages=HELLO).choices
    assert fake.requests[-1].raw_path.startswith("/model/") and fake.requests[-1].raw_path.endswith("/converse")
