"""Shared fixtures for the core suite: a fake OpenAI upstream and gateways in front of it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # `fakes` (a namespace package), `openapi_check`, `core_helpers`
    sys.path.insert(0, str(TESTS))

from core_helpers import CLIENT_KEY, ENV, UPSTREAM_KEY, config_yaml  # noqa: E402
from fakes.openai_upstream import FakeOpenAI  # noqa: E402

from proxy.testing import FakeServer, Gateway, RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole run (a missing binary fails, never skips)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    """The fake OpenAI server, running; `.url` is its origin."""
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    with FakeServer(fake.app) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Gateway]]:
    """`make_gateway(yaml_text, env=...)`: a started gateway, stopped at teardown."""
    with ExitStack() as stack:

        def make(config: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> Gateway:
            return stack.enter_context(Gateway(config, env={**ENV, **(env or {})}, **kwargs))

        yield make


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    """The default gateway: client keys on, every model routed to the fake upstream."""
    return make_gateway(config_yaml(upstream.url))


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as c:
        yield c


