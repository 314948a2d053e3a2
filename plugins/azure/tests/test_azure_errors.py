"""Azure's error bodies reach OpenAI clients as OpenAI errors with the right status."""

from __future__ import annotations

import openai
import orjson
import pytest
from azure_support import CLIENT_KEY, UPSTREAM_KEY, raw_post
from openapi_check import validate_error

from proxy.config.options import Options
from proxy.errors import ConfigError
from proxy.testing import Gateway

CONFIG = """
clients:
  keys:
    - {{name: team-a, key: {client}}}
providers:
  azure:
    type: azure
    base_url: {url}
    api_key: {key}
    api_version: "2024-10-21"
routes:
  - model: gpt-4o
    to: {{provider: azure, model: prod-gpt4o}}
  - model: missing
    to: {{provider: azure, model: no-such-deployment}}
"""


def _gateway(url: str, key: str = UPSTREAM_KEY) -> Gateway:
    return Gateway(CONFIG.format(client=CLIENT_KEY, url=url, key=key))


def _ask(gw: Gateway, text: str, model: str = "gpt-4o") -> tuple[int, dict[str, str], dict]:
    status, headers, body = raw_post(
        gw.base_url + "/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": text}]},
        {"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    return status, headers, orjson.loads(body)


def test_deployment_not_found_is_a_404_model_not_found(azure) -> None:
    _, url = azure
    with _gateway(url) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 404
        assert info.value.code == "model_not_found"
        status, _, body = _ask(gw, "x", "missing")
        assert status == 404
        assert validate_error(body)["param"] == "model"


def test_content_filter_is_a_400_keeping_innererror(azure) -> None:
    _, url = azure
    with _gateway(url) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "please filter me"}])
        assert info.value.code == "content_filter"
        status, _, body = _ask(gw, "please filter me")
        assert status == 400
        error = validate_error(body)
        assert error["type"] == "invalid_request_error" and error["param"] == "prompt"
        assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
        assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}


def test_rate_limit_is_a_429_with_retry_after_in_seconds(azure) -> None:
    _, url = azure
    with _gateway(url) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "rate limit me"}])
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "6"  # 5200 ms, rounded up
        status, headers, body = _ask(gw, "rate limit me")
        assert status == 429 and headers["retry-after"] == "6"
        assert validate_error(body)["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_keep_their_status(azure, status: int) -> None:
    _, url = azure
    with _gateway(url) as gw:
        got, _, body = _ask(gw, f"fail with {status}")
        assert got == status
        assert validate_error(body)["type"] == "server_error"


def test_rejected_key_is_a_401_that_echoes_nothing(azure) -> None:
    _, url = azure
    wrong = "azure-wrong-key-9876543210"
    with (
        _gateway(url, key=wrong) as gw,
        openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client,
    ):
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "upstream_auth_failed"
        status, _, body = _ask(gw, "x")
        assert status == 401
        validate_error(body)
        assert wrong not in orjson.dumps(body).decode()
        assert wrong not in gw.log_text and UPSTREAM_KEY not in gw.log_text


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"endpoint": "https://r.openai.azure.com", "api_key": "k"}, "api_version: required"),
        ({"endpoint": "https://r.openai.azure.com", "api_version": "2024-10-21"}, "api_key: required"),
        ({"api_key": "k", "api_version": "2024-10-21"}, "expected exactly one of endpoint"),
        (
            {"endpoint": "https://r.openai.azure.com", "api_version": "v", "api_key": "k", "ad_token": "t"},
            "not both",
        ),
        (
            {"endpoint": "https://r.openai.azure.com", "api_version": "v", "ad_token": "t", "ad_token_file": "/f"},
            "expected only one of ad_token",
        ),
        ({"endpoint": "https://r.openai.azure.com", "api_key": "k", "api_mode": "v2"}, "expected one of classic, v1"),
    ],
)
def test_config_errors_name_the_key(block: dict, problem: str) -> None:
    from relaygate_azure.provider import AzureProvider

    with pytest.raises(ConfigError) as info:
        AzureProvider("azure", Options({"type": "azure", **block}, ("providers", "azure")))
    assert problem in str(info.value)
    assert "providers.azure" in str(info.value)


def test_unquoted_api_version_date_is_accepted() -> None:
    import datetime

    from relaygate_azure.provider import AzureProvider

    provider = AzureProvider(
        "azure",
        Options(
            {
                "type": "azure",
                "endpoint": "https://r.openai.azure.com",
                "api_key": "k",
                "api_version": datetime.date(2024, 10, 21),
            }
        ),
    )
    assert provider.api_version == "2024-10-21"


# ---------------------------------------------------------------- the endpoint as Azure documents it


def _azure(**block: object):  # type: ignore[no-untyped-def]
    from relaygate_azure.provider import AzureProvider

    return AzureProvider("azure", Options({"type": "azure", "api_key": "k", **block}, ("providers", "azure")))


@pytest.mark.parametrize("endpoint", [
    "https://r.openai.azure.com", "https://r.openai.azure.com/", "https://r.openai.azure.com/openai",
    "https://r.openai.azure.com/openai/", "https://r.cognitiveservices.azure.com/",
])
def test_classic_endpoint_with_or_without_openai(endpoint: str) -> None:
    provider = _azure(endpoint=endpoint, api_version="2024-10-21")
    assert provider.api_mode == "classic"
    assert provider.root == endpoint.split("/openai")[0].rstrip("/")


@pytest.mark.parametrize("url", ["https://r.openai.azure.com/openai/v1", "https://r.openai.azure.com/openai/v1/",
                                 "https://r.services.ai.azure.com/openai/v1/"])
@pytest.mark.parametrize("key", ["endpoint", "base_url"])
def test_openai_v1_url_means_the_v1_api(url: str, key: str) -> None:
    """Azure's v1 guide gives OpenAI clients `…/openai/v1/` and no api-version: that config works as it is."""
    provider = _azure(**{key: url})
    assert provider.api_mode == "v1" and provider.api_version is None
    assert provider.root == url.split("/openai")[0]
    assert provider.supports_passthrough


@pytest.mark.parametrize("endpoint", [
    "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    "https://r.openai.azure.com/something",
])
def test_other_endpoint_paths_are_check_errors(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"providers\.azure\.endpoint: expected the resource endpoint as Azure"):
        _azure(endpoint=endpoint, api_version="2024-10-21")
