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
