"""Vertex tokens under load and revocation, Google errors, fallbacks to Azure, and secrets."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path

import openai
import orjson
import pytest
from azure_fake import AzureState
from azure_fake import make_app as make_azure_app
from cryptography.hazmat.primitives import serialization
from openapi_check import validate_error
from vertex_support import CLIENT_KEY, HELLO, access_records, client_for, config

from proxy.testing import FakeServer, Gateway

AZURE_KEY = "azure-upstream-key-0123456789"


def provider_of(gw: Gateway, name: str = "vertex"):  # type: ignore[no-untyped-def]
    assert gw.app is not None
    return gw.provider(name)


async def test_fifty_concurrent_requests_across_expiry_share_one_refresh(google) -> None:
    state, url, account = google
    state.lifetime = 2.0  # with refresh_margin: 1, a token is used for about one second
    with Gateway(config(url, account)) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
            await client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
            assert state.issue_count == 1
            await asyncio.sleep(1.1)  # now inside the margin: the next request must refresh
            replies = await asyncio.gather(
                *(client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO) for _ in range(50))
            )
        assert all(r.choices[0].message.content == "Hello from Gemini" for r in replies)
        assert state.issue_count == 2  # exactly one refresh for fifty requests
        assert provider_of(gw).tokens.refreshes == 2
        tokens = {r["headers"]["Authorization"] for r in state.requests[1:]}
        assert len(tokens) == 1  # all fifty went with the new token


def test_a_401_refreshes_once_and_retries(google) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        state.revoke_all()  # Google revokes the live token before it expires
        reply = client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert reply.choices[0].message.content == "Hello from Gemini"
        assert state.issue_count == 2
        assert [
            r["headers"]["Authorization"] == state.requests[0]["headers"]["Authorization"] for r in state.requests
        ] == [
            True,
            True,  # refused
            False,  # retried with the refreshed token
        ]
        record = access_records(gw, 2)[-1]
        assert record["status"] == 200 and record["fallbacks"] == []


def test_a_401_that_refreshing_cannot_fix_is_an_authentication_error(google) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        state.revoke_all()
        state.client_email = "someone-else@example.iam.gserviceaccount.com"  # the token endpoint refuses now
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert info.value.status_code == 401
        assert info.value.code == "upstream_auth_failed"
        validate_error(info.value.body if "error" in (info.value.body or {}) else {"error": info.value.body})
        assert "refreshing a Google access token failed" in gw.log_text
        assert len(state.requests) == 2  # no retry with the same refused token


def test_missing_credentials_file_is_a_503(google, tmp_path: Path) -> None:
    state, url, _ = google
    with Gateway(config(url, tmp_path / "nope.json")) as gw, client_for(gw) as client:
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert info.value.status_code == 503
        assert info.value.code == "upstream_auth_unavailable"
        assert "cannot get a Google access token" in gw.log_text
        assert state.requests == []


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (400, openai.BadRequestError, "invalid_argument"),
        (403, openai.PermissionDeniedError, "upstream_auth_failed"),
        (404, openai.NotFoundError, "model_not_found"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (503, openai.InternalServerError, "upstream_unavailable"),
        (504, openai.InternalServerError, "upstream_timeout"),
    ],
)
def test_google_errors_become_openai_errors(google, status: int, error_class: type, code: str) -> None:
    _, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        for text in (f"google {status}", f"google object {status}"):  # list-wrapped and plain bodies
            with pytest.raises(error_class) as info:
                client.chat.completions.create(model="gemini-2.0-flash", messages=[{"role": "user", "content": text}])
            assert info.value.status_code == status
            error = validate_error({"error": info.value.body})
            assert error["code"] == code
            assert "my-proj-123" not in error["message"]  # the project id stays at the gateway


def test_vertex_failures_fall_back_to_azure(google) -> None:
    _, url, account = google
    azure = AzureState(api_key=AZURE_KEY)
    with FakeServer(lambda: make_azure_app(azure)) as azure_server:
        azure_block = (
            f"  azure:\n    type: azure\n    base_url: {azure_server.url}\n"
            f"    api_key: {AZURE_KEY}\n    api_version: '2024-10-21'"
        )
        fallback = (
            "  - model: smart\n"
            "    to:\n"
            "      - {provider: vertex, model: google/gemini-2.0-flash}\n"
            "      - {provider: azure, model: prod-gpt4o}"
        )
        yaml = config(url, account, providers=azure_block, routes=fallback)
        with Gateway(yaml) as gw, client_for(gw) as client:
            for status in (503, 429):
                reply = client.chat.completions.create(
                    model="smart", messages=[{"role": "user", "content": f"google {status}"}]
                )
                assert reply.choices[0].message.content == "Hello from Azure"
            chunks = list(
                client.chat.completions.create(
                    model="smart", messages=[{"role": "user", "content": "google 503"}], stream=True
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "Hello from Azure"
            assert all(c.choices for c in chunks)
            # Vertex answering normally: no fallback
            assert client.chat.completions.create(model="smart", messages=HELLO).choices[0].message.content == (
                "Hello from Gemini"
            )
            records = access_records(gw, 4)
            assert [r["provider"] for r in records] == ["azure", "azure", "azure", "vertex"]
            assert records[0]["fallbacks"] == ["vertex: HTTP 503 upstream_unavailable"]
            assert records[1]["fallbacks"] == ["vertex: HTTP 429 rate_limit_exceeded"]
            assert records[3]["fallbacks"] == []
            assert azure.seen()["headers"]["api-key"] == AZURE_KEY


def test_no_secret_reaches_logs_or_responses(google, rsa_key) -> None:
    state, url, account = google
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_lines = [line for line in pem.splitlines() if not line.startswith("-----")]
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        bodies = []
        raw = client.chat.completions.with_raw_response.create(model="gemini-2.0-flash", messages=HELLO)
        assert orjson.loads(raw.http_response.text)["choices"]
        bodies.append(raw.http_response.text + str(raw.headers))
        for text in ("google 400", "google 403", "google 503"):
            try:
                client.chat.completions.create(model="gemini-2.0-flash", messages=[{"role": "user", "content": text}])
            except openai.APIStatusError as exc:
                bodies.append(exc.response.text + str(exc.response.headers))
        state.revoke_all()
        client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        stream = client.chat.completions.with_raw_response.create(model="gemini-2.0-flash", messages=HELLO, stream=True)
        bodies.append(b"".join(stream.http_response.iter_bytes()).decode())
        secrets = [*state.issued, CLIENT_KEY, *key_lines, base64.b64encode(pem.encode()).decode()[:40]]
        assert len(state.issued) == 2
        haystacks = [gw.log_text, *bodies]
        for secret in secrets:
            for hay in haystacks:
                assert secret not in hay
        assert not re.search(r"ya29\.", gw.log_text)


def test_no_credentials_anywhere_is_a_quick_503(google) -> None:
    state, url, account = google
    yaml = config(url, account).replace(f"    credentials_file: {account}\n", "")
    with Gateway(yaml) as gw, client_for(gw) as client:  # ADC: no env file, no gcloud, metadata port closed
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert info.value.status_code == 503 and info.value.code == "upstream_auth_unavailable"
        assert time.monotonic() - started < 10
        assert "DefaultCredentialsError" in gw.log_text
        # right after a failure the next requests fail at once (so fallbacks are quick)
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert time.monotonic() - started < 1
        assert provider_of(gw).tokens.refreshes == 0  # credentials never loaded, never refreshed
        assert state.requests == []
