"""Fixtures for the Bedrock plugin: a fake Bedrock on loopback and gateways in front of it.

No test here may reach AWS: every provider block names the fake as `endpoint_url` and
`control_endpoint_url`, credentials are static (or a local credential_process), the
instance metadata service is disabled, and real AWS config files are hidden.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # `fakes` (a namespace package shared with the core suite), `bedrock_helpers`
    sys.path.insert(0, str(TESTS))

from bedrock_helpers import AKID, API_KEY, CLIENT_KEY, SECRET, gateway_env  # noqa: E402
from fakes.bedrock import FakeBedrock  # noqa: E402

from proxy.testing import FakeServer, Gateway  # noqa: E402

_AWS_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_BEARER_TOKEN_BEDROCK", "AWS_REGION", "AWS_DEFAULT_REGION",
)


@pytest.fixture(autouse=True)
def no_real_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the machine's AWS settings and switch the metadata service off."""
    for var in _AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    """The fake Bedrock, running; `.url` is its origin."""
    bedrock = FakeBedrock(keys={AKID: (SECRET, None)}, api_key=API_KEY)
    with FakeServer(bedrock.app) as server:
        bedrock.url = server.url  # type: ignore[attr-defined]
        yield bedrock


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Gateway]]:
    with ExitStack() as stack:

        def make(config: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> Gateway:
            return stack.enter_context(Gateway(config, env={**gateway_env(), **(env or {})}, **kwargs))

        yield make


@pytest.fixture
def gw(fake: FakeBedrock, make_gateway: Callable[..., Gateway]) -> Gateway:
    from bedrock_helpers import config_yaml

    return make_gateway(config_yaml(fake.url))  # type: ignore[attr-defined]


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as c:
        yield c
