"""The README documents what the code does: every dropped or refused parameter, every stop reason and error."""

from __future__ import annotations

from pathlib import Path

import pytest
from relaygate_bedrock.errors import _BY_NAME
from relaygate_bedrock.request_map import DROPPED, GUARDRAIL_FIELD, REFUSED
from relaygate_bedrock.response_map import FINISH_REASONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("param", sorted((DROPPED - {GUARDRAIL_FIELD, "stream_options"}) | set(REFUSED)))
def test_parameter_is_in_the_table(param: str) -> None:
    assert f"`{param}`" in README


@pytest.mark.parametrize("reason", sorted(FINISH_REASONS))
def test_stop_reason_is_documented(reason: str) -> None:
    assert f"`{reason}`" in README


_SIGNING_ERRORS = {"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
                   "IncompleteSignatureException", "ConflictException"}  # the README groups these


@pytest.mark.parametrize("name", sorted(set(_BY_NAME) - _SIGNING_ERRORS))
def test_error_is_documented(name: str) -> None:
    assert f"`{name}`" in README
