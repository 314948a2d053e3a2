"""The vendors' own dialect in the core's keys: enumerations in any case, stored as the core spells them."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.load import load_config
from proxy.errors import ConfigError


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, {})


@pytest.mark.parametrize("written", ["info", "Info", "INFO"])
def test_log_level_in_any_case(written: str, tmp_path: Path) -> None:
    config = _load(tmp_path, f"server: {{log_level: {written}}}\n")
    assert config.server.log_level == "INFO"  # type: ignore[attr-defined]


def test_unknown_choice_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.log_level: expected one of DEBUG, INFO, WARNING, ERROR"):
        _load(tmp_path, "server: {log_level: loud}\n")


@pytest.mark.parametrize(("written", "base"), [
    ("https://api.openai.com", "https://api.openai.com/v1"), ("https://api.openai.com/", "https://api.openai.com/v1"),
    ("https://eu.api.openai.com/v1/", "https://eu.api.openai.com/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"), ("http://ollama:11434", "http://ollama:11434"),
])
def test_openai_base_url(written: str, base: str, tmp_path: Path) -> None:
    from proxy.builtin.openai import OpenAIProvider

    config = load_config(_write(tmp_path, f"providers:\n  o: {{type: openai, base_url: '{written}'}}\n"),
                         {"openai": OpenAIProvider})
    assert config.providers["o"].base_url == base  # type: ignore[attr-defined]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _guarded() -> type:
    from proxy.builtin.openai import OpenAIProvider

    class Guarded(OpenAIProvider):  # any provider type that takes guardrails will do
        supports_guardrails = True

    return Guarded


@pytest.mark.parametrize(("written", "sent"), [("draft", "DRAFT"), ("Draft", "DRAFT"), ("3", "3"), ("3 ", "3")])
def test_guardrail_version_as_aws_spells_it(written: str, sent: str, tmp_path: Path) -> None:
    text = ("providers:\n  o: {type: g}\nroutes:\n"
            f"  - {{model: m, to: o, guardrail: {{id: gr1, version: '{written}', trace: ENABLED}}}}\n")
    config = load_config(_write(tmp_path, text), {"g": _guarded()})
    guardrail = config.routes[0].guardrail
    assert guardrail is not None and guardrail.version == sent and guardrail.trace == "enabled"


def test_guardrail_version_that_aws_would_refuse(tmp_path: Path) -> None:
    text = "providers:\n  o: {type: g}\nroutes:\n  - {model: m, to: o, guardrail: {id: g, version: v1}}\n"
    with pytest.raises(ConfigError, match=r"routes\[0\]\.guardrail\.version: expected a version number or DRAFT"):
        load_config(_write(tmp_path, text), {"g": _guarded()})
