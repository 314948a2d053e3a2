"""Credentials: refreshed as they expire (credential_process), assumed roles, session tokens, no leaks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from bedrock_helpers import AKID, CLIENT_KEY, SECRET, assert_no_secrets, config_yaml, post
from fakes.bedrock import FakeBedrock

from proxy.testing import Gateway

HI = [{"role": "user", "content": "hi"}]
PROCESS_KEYS = {
    "AKIDPROC1": ("proc-secret-one-1111111111", "proc-token-one-aaaaaaaaaa"),
    "AKIDPROC2": ("proc-secret-two-2222222222", "proc-token-two-bbbbbbbbbb"),
}
SCRIPT = """
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
keys = %r
key = sorted(keys)[n %% 2]
# Expiring inside botocore's mandatory refresh window: every use refreshes.
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": key, "SecretAccessKey": keys[key][0],
                  "SessionToken": keys[key][1], "Expiration": expires.isoformat()}))
"""


def test_credentials_refresh_with_credential_process(
    fake: FakeBedrock, make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    fake.keys.update(PROCESS_KEYS)
    script = tmp_path / "creds.py"
    script.write_text(SCRIPT % {k: list(v) for k, v in PROCESS_KEYS.items()})
    config = tmp_path / "aws-config"
    config.write_text(f"[profile relay]\ncredential_process = {sys.executable} {script} {tmp_path / 'n'}\n")
    yaml = config_yaml(fake.url).replace(
        f"    access_key_id: {AKID}\n    secret_access_key: ${{BEDROCK_SECRET}}\n", "    profile: relay\n"
    )
    gw = make_gateway(yaml, env={"AWS_CONFIG_FILE": str(config)})
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        for _ in range(3):
            assert c.chat.completions.create(model="claude", messages=HI).choices[0].message.content
    used = [r.access_key for r in fake.requests]
    assert set(used) == {"AKIDPROC1", "AKIDPROC2"}  # new keys were picked up as the old ones expired
    assert int((tmp_path / "n").read_text()) >= 3
    tokens = {r.headers.get("X-Amz-Security-Token") for r in fake.requests}
    assert tokens == {v[1] for v in PROCESS_KEYS.values()}
    for secret, token in PROCESS_KEYS.values():
        assert secret not in gw.log_text and token not in gw.log_text


def test_assume_role(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    role_key, role_secret, role_token = fake.sts_keys
    fake.keys[role_key] = (role_secret, role_token)
    extra = (f"    role_arn: arn:aws:iam::123456789012:role/relaygate\n    external_id: ext-123\n"
             f"    sts_endpoint_url: {fake.url}\n")
    gw = make_gateway(config_yaml(fake.url, provider_extra=extra, catch_all=True))
    resp = post(gw.base_url, "/chat/completions", {"model": "claude", "messages": HI})
    assert resp.status == 200, resp.body
    sts = [r for r in fake.requests if r.raw_path == "/"]
    assert len(sts) == 1 and sts[0].access_key == AKID  # the source keys signed AssumeRole
    assert b"ExternalId=ext-123" in sts[0].body and b"RoleSessionName=relaygate" in sts[0].body
    runtime = [r for r in fake.requests if r.raw_path.startswith("/model/")]
    assert runtime[-1].access_key == role_key and runtime[-1].headers["X-Amz-Security-Token"] == role_token
    # The control plane uses the role too.
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        assert "us.anthropic.claude-3-7-sonnet-20250219-v1:0" in [m.id for m in c.models.list()]
    control = [r for r in fake.requests if r.raw_path.startswith(("/foundation-models", "/inference-profiles"))]
    assert control and {r.access_key for r in control} == {role_key}
    assert_no_secrets(gw.log_text, resp.body)
    assert role_secret not in gw.log_text and role_token not in gw.log_text


def test_static_session_token_is_sent(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    fake.keys["ASIASTATIC"] = ("static-secret-xyz", "static-token-xyz")
    yaml = config_yaml(fake.url).replace(
        f"    access_key_id: {AKID}\n    secret_access_key: ${{BEDROCK_SECRET}}\n",
        "    access_key_id: ASIASTATIC\n    secret_access_key: static-secret-xyz\n"
        "    session_token: static-token-xyz\n",
    )
    gw = make_gateway(yaml)
    assert post(gw.base_url, "/chat/completions", {"model": "claude", "messages": HI}).status == 200
    assert fake.requests[-1].access_key == "ASIASTATIC"
    assert "static-secret-xyz" not in gw.log_text and "static-token-xyz" not in gw.log_text


def test_no_secret_in_logs_or_errors(fake: FakeBedrock, gw: Gateway) -> None:
    bodies = [
        post(gw.base_url, "/chat/completions", {"model": "claude", "messages": HI}).body,
        post(gw.base_url, "/chat/completions", {"model": "gpt-oss", "messages": HI}).body,
        post(gw.base_url, "/chat/completions", {"model": "claude", "stream": True, "messages": HI}).body,
        post(gw.base_url, "/chat/completions",
             {"model": "claude", "messages": [{"role": "user", "content": "[[error:AccessDeniedException]]"}]}).body,
    ]
    assert_no_secrets(gw.log_text, *bodies)
    assert SECRET not in repr(fake.requests)  # the secret itself never travels, only the signature


def test_missing_credentials_fail_start_clearly(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> None:
    from proxy.errors import ConfigError

    yaml = config_yaml(fake.url).replace(f"    access_key_id: {AKID}\n    secret_access_key: ${{BEDROCK_SECRET}}\n", "")
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        make_gateway(yaml)
    assert fake.requests == []


def test_config_errors_name_the_key(fake: FakeBedrock, tmp_path: Path) -> None:
    from relaygate_bedrock.plugin import register_providers

    from proxy.config.load import load_config
    from proxy.errors import ConfigError

    types: dict[str, type] = {}
    register_providers(lambda name, cls: types.__setitem__(name, cls))
    bad = {
        "region: us-west-2\n    access_key_id: AK": "access_key_id and secret_access_key go together",
        "endpoint_url: http://x": "region: required",
        "region: us-west-2\n    fetch_images: maybe": "fetch_images: expected true or false",
        "region: us-west-2\n    image_fetch: {max_bytes: 10, colour: red}": "image_fetch.colour: unknown key",
    }
    for block, expected in bad.items():
        path = tmp_path / "c.yaml"
        path.write_text(f"providers:\n  b:\n    type: bedrock\n    {block}\n")
        with pytest.raises(ConfigError, match=expected):
            load_config(path, types)
    path.write_text("providers:\n  o:\n    type: bedrock-openai\n    region: us-east-1\n")
    with pytest.raises(ConfigError, match="api_key: required"):
        load_config(path, types)
