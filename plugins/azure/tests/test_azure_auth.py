"""Entra ID tokens (command, file, fixed) and Azure-style clients against the gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import openai
import pytest
from azure_support import CLIENT_KEY, UPSTREAM_KEY, access_record
from relaygate_azure.auth import jwt_expiry, parse_token_output

from proxy.testing import Gateway

HELLO = [{"role": "user", "content": "hello"}]

# A stand-in for `az account get-access-token`: prints a fresh JWT-shaped token as JSON
# and records it, so the fake resource knows which tokens were issued.
TOKEN_COMMAND = r"""
import base64, json, sys, time
from pathlib import Path
state = Path(sys.argv[1])
lifetime = float((state / "lifetime").read_text())
issued = (state / "issued").read_text().split() if (state / "issued").exists() else []
def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
claims = {"exp": int(time.time() + lifetime), "n": len(issued)}
token = ".".join([b64({"alg": "RS256", "typ": "JWT"}), b64(claims), "sig"])
(state / "issued").write_text(" ".join([*issued, token]))
print(json.dumps({"accessToken": token, "tokenType": "Bearer"}))
"""


def make_jwt(exp: float, n: int = 0) -> str:
    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64({'exp': int(exp), 'n': n})}.sig"


def provider_of(gw: Gateway):  # type: ignore[no-untyped-def]
    assert gw.app is not None
    return gw.provider("azure")


def token_config(url: str, auth: str) -> str:
    return f"""
providers:
  azure:
    type: azure
    base_url: {url}
    api_version: "2024-10-21"
{auth}
routes:
  - model: gpt-4o
    to: {{provider: azure, model: prod-gpt4o}}
"""


async def test_token_command_refreshes_once_for_many_requests(azure, tmp_path: Path) -> None:
    state, url = azure
    script = tmp_path / "token.py"
    script.write_text(TOKEN_COMMAND)
    (tmp_path / "lifetime").write_text("2")
    state.accept_token = lambda t: t in (tmp_path / "issued").read_text().split() and jwt_expiry(t) > time.time()
    auth = f"    ad_token_command: [{sys.executable}, {script}, {tmp_path}]\n    ad_token_refresh_margin: 1"
    with Gateway(token_config(url, auth)) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
            first = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            assert first.choices[0].message.content == "Hello from Azure"
            issued = (tmp_path / "issued").read_text().split()
            assert len(issued) == 1
            assert state.seen()["headers"]["Authorization"] == f"Bearer {issued[0]}"
            assert "api-key" not in state.seen()["headers"]

            await asyncio.sleep(1.2)  # inside the refresh margin now
            replies = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o", messages=HELLO) for _ in range(20))
            )
            assert all(r.choices[0].message.content == "Hello from Azure" for r in replies)
        issued = (tmp_path / "issued").read_text().split()
        assert len(issued) == 2  # one refresh, shared by all twenty
        assert provider_of(gw).tokens.fetches == 2
        for token in issued:
            assert token not in gw.log_text


def test_token_file_is_read_again_after_a_401(azure, tmp_path: Path) -> None:
    state, url = azure
    old, new = make_jwt(time.time() + 3600, 1), make_jwt(time.time() + 3600, 2)
    token_file = tmp_path / "token"
    token_file.write_text(old + "\n")
    state.tokens = {old}
    with (
        Gateway(token_config(url, f"    ad_token_file: {token_file}")) as gw,
        openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client,
    ):
        assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content
        # the token is revoked and a sidecar writes a new one: the 401 makes the gateway read it
        state.tokens = {new}
        token_file.write_text(new)
        reply = client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices[0].message.content == "Hello from Azure"
        assert state.requests[-2]["headers"]["Authorization"] == f"Bearer {old}"
        assert state.requests[-1]["headers"]["Authorization"] == f"Bearer {new}"
        assert provider_of(gw).tokens.fetches == 2
        assert old not in gw.log_text and new not in gw.log_text


def test_fixed_token_is_not_retried_on_401(azure) -> None:
    state, url = azure
    token = make_jwt(time.time() + 3600)
    with (
        Gateway(token_config(url, f"    ad_token: {token}")) as gw,
        openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client,
    ):
        state.tokens = {token}
        assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices
        state.tokens = set()
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert len(state.requests) == 2  # no second attempt with the same token
        assert token not in gw.log_text


def test_failing_token_command_is_a_503_without_details(azure, tmp_path: Path) -> None:
    _, url = azure
    script = tmp_path / "fail.py"
    script.write_text("import sys; print('ERROR: Please run az login', file=sys.stderr); sys.exit(3)")
    auth = f"    ad_token_command: [{sys.executable}, {script}]"
    with (
        Gateway(token_config(url, auth)) as gw,
        openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert info.value.status_code == 503
        assert "status 3" in gw.log_text  # the operator sees why
        with pytest.raises(openai.InternalServerError):  # within the back-off: no second run
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert provider_of(gw).tokens.fetches == 1


def test_az_cli_json_and_raw_tokens_parse() -> None:
    now = 1_700_000_000.0
    az = parse_token_output('{"accessToken": "abc", "expires_on": 1700003600, "tokenType": "Bearer"}', ttl=60, now=now)
    assert (az.value, az.expires_at) == ("abc", 1700003600.0)
    local = parse_token_output('{"accessToken": "abc", "expiresOn": "2030-01-01 10:00:00.000000"}', ttl=60, now=now)
    assert local.expires_at is not None and local.expires_at > now
    jwt = make_jwt(now + 100)
    assert parse_token_output(jwt + "\n", ttl=60, now=now).expires_at == now + 100
    assert parse_token_output("opaque-token", ttl=60, now=now).expires_at == now + 60


AZURE_STYLE = f"""
clients:
  keys:
    - name: azure-sdk-user
      key: {CLIENT_KEY}
providers:
  azure:
    type: azure
    base_url: ${{AZURE_URL}}
    api_key: {UPSTREAM_KEY}
    api_version: "2024-10-21"
routes:
  - model: gpt-4o
    to: {{provider: azure, model: prod-gpt4o}}
  - model: embed-small
    to: {{provider: azure, model: prod-embed}}
"""


def test_azure_openai_client_against_the_gateway(azure) -> None:
    state, url = azure
    with Gateway(AZURE_STYLE, env={"AZURE_URL": url}) as gw:
        client = openai.AzureOpenAI(azure_endpoint=gw.url, api_key=CLIENT_KEY, api_version="2024-10-21", max_retries=0)
        with client:
            reply = client.chat.completions.create(model="gpt-4o", messages=HELLO)
            assert reply.choices[0].message.content == "Hello from Azure"
            seen = state.seen()
            assert seen["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
            assert seen["headers"]["api-key"] == UPSTREAM_KEY  # the gateway's key, not the client's

            chunks = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
            assert all(c.choices for c in chunks)
            assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "Hello from Azure"

            vectors = client.embeddings.create(model="embed-small", input="hi")
            assert vectors.data[0].embedding == [0.1, 0.2, 0.3]
            assert state.seen()["path"] == "/openai/deployments/prod-embed/embeddings"

        records = access_record(gw, 3)
        assert {r["client"] for r in records} == {"azure-sdk-user"}
        assert {r["model"] for r in records} == {"gpt-4o", "embed-small"}

        wrong = openai.AzureOpenAI(azure_endpoint=gw.url, api_key="not-a-key", api_version="2024-10-21", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert UPSTREAM_KEY not in gw.log_text and CLIENT_KEY not in gw.log_text


@pytest.mark.parametrize("credential", ["api_key", "ad_token_file"])
def test_no_secret_in_logs_or_responses(azure, tmp_path: Path, credential: str) -> None:
    state, url = azure
    token = make_jwt(time.time() + 3600, 7)
    if credential == "api_key":
        auth, secret = f"    api_key: {UPSTREAM_KEY}", UPSTREAM_KEY
    else:
        (tmp_path / "token").write_text(token)
        state.tokens = {token}
        auth, secret = f"    ad_token_file: {tmp_path / 'token'}", token
    yaml = AZURE_STYLE.replace(f"    api_key: {UPSTREAM_KEY}", auth)
    seen: list[str] = []
    with (
        Gateway(yaml, env={"AZURE_URL": url}) as gw,
        openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client,
    ):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        seen.append(raw.http_response.text + str(raw.headers))
        stream = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, stream=True)
        seen.append(b"".join(stream.http_response.iter_bytes()).decode() + str(stream.headers))
        for text in ("please filter me", "rate limit me", "fail with 503"):
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])
            seen.append(info.value.response.text + str(info.value.response.headers))
        state.api_key, state.tokens = "rotated", set()  # now the upstream refuses the gateway's credential
        with pytest.raises(openai.AuthenticationError) as denied:
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        seen.append(denied.value.response.text + str(denied.value.response.headers))
        access_record(gw, 6)
        for hay in (gw.log_text, *seen):
            assert secret not in hay and CLIENT_KEY not in hay
