"""Fixtures for relaygate-azure: the fake Azure resource, and sys.path for the helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CORE_TESTS = HERE.parents[2] / "tests"  # openapi_check: OpenAI's spec as a validator
for _path in (HERE, CORE_TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from azure_fake import AzureState, make_app  # noqa: E402

from proxy.testing import FakeServer  # noqa: E402


@pytest.fixture
def azure() -> Iterator[tuple[AzureState, str]]:
    """The fake Azure OpenAI resource, running: (state, origin URL)."""
    state = AzureState()
    with FakeServer(lambda: make_app(state)) as server:
        yield state, server.url
