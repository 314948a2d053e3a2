"""Typed reads of one YAML block, with errors that name the file, line and key path.

Provider classes validate their own block through this, so every provider's config
errors read the same: `config.yaml:12: providers.azure.api_version: expected a string`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()

Locator = Callable[[tuple[Any, ...]], str]  # key path -> "file:line"


def _no_location(path: tuple[Any, ...]) -> str:
    return "<config>"


def format_path(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _coerce(value: Any, kinds: tuple[type, ...]) -> Any:
    """Numbers and booleans that arrived as text through `${VAR}` interpolation."""
    if not isinstance(value, str) or str in kinds:
        return value
    text = value.strip()
    if bool in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
    except ValueError:
        if float in kinds:
            try:
                return float(text)
            except ValueError:
                pass
    return value


class Options:
    """A read-only view of one mapping in the config that remembers what was read."""

    def __init__(
        self,
        data: Mapping[builtins.str, Any] | None,
        path: tuple[Any, ...] = (),
        locate: Locator = _no_location,
    ) -> None:
        self.data: Mapping[builtins.str, Any] = data or {}
        self.path = path
        self._locate = locate
        self._read: set[builtins.str] = set()

    # -------------------------------------------------------------- errors

    def error(self, key: builtins.str | None, expected: builtins.str) -> ConfigError:
        path = self.path + ((key,) if key is not None else ())
        return ConfigError(f"{self._locate(path)}: {format_path(path) or '<top>'}: {expected}")

    def check_unused(self) -> None:
        """Refuse keys nobody read: a typo should fail `relaygate check`, not be ignored."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise self.error(unknown[0], "unknown key (misspelt, or not for this provider type?)")

    # -------------------------------------------------------------- reads

    def __contains__(self, key: builtins.str) -> builtins.bool:
        return key in self.data

    def keys(self) -> Iterator[builtins.str]:
        return iter(self.data)

    def raw(self, key: builtins.str, default: Any = None) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def _get(self, key: builtins.str, default: Any, kinds: tuple[type, ...], expected: builtins.str) -> Any:
        self._read.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise self.error(key, f"required; expected {expected}")
            return default
        value = _coerce(self.data[key], kinds)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {expected}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    def str(
        self, key: builtins.str, default: Any = _MISSING, *, choices: tuple[builtins.str, ...] | None = None
    ) -> Any:
        value = self._get(key, default, (str,), "a string")
        if choices is not None and value is not None and value not in choices:
            # Vendors write their enumerations in their own case (AWS: ENABLED, Converse:
            # enabled): any case is accepted, and the value is the choice as spelt here.
            canonical = next((c for c in choices if c.lower() == value.strip().lower()), None)
            if canonical is None:
                raise self.error(key, f"expected one of {', '.join(choices)} (any case), got {value!r}")
            value = canonical
        return value

    def secret(self, key: builtins.str, *, env: builtins.str | None = None) -> builtins.str | None:
        """A credential from the block, else from `env`; never echoed in errors."""
        value: builtins.str | None = self._get(key, None, (str,), "a string")
        if value is None and env:
            value = os.environ.get(env) or None
        return value

    def number(self, key: builtins.str, default: Any = _MISSING, *, minimum: float = 0) -> Any:
        value = self._get(key, default, (int, float), "a number")
        if value is not None and value < minimum:
            raise self.error(key, f"expected a number >= {minimum}, got {value!r}")
        return value

    def int(self, key: builtins.str, default: Any = _MISSING, *, minimum: builtins.int = 0) -> Any:
        value = self._get(key, default, (int,), "a whole number")
        if value is not None and value < minimum:
            raise self.error(key, f"expected a whole number >= {minimum}, got {value!r}")
        return value

    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self._get(key, default, (bool,), "true or false")

    def url(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, (str,), "an http(s) URL")
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise self.error(key, f"expected an http(s) URL, got {value!r}")
            value = value.rstrip("/")
        return value

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, (list, str), "a list of strings")
        if isinstance(value, str):
            value = [value]
        if value is not None and not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return value

    def str_map(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, (dict,), "a mapping of strings")
        if value is not None and not all(isinstance(v, str) for v in value.values()):
            raise self.error(key, "expected every value to be a string")
        return value

    def block(self, key: builtins.str, *, required: builtins.bool = False) -> Options:
        value = self._get(key, _MISSING if required else None, (dict,), "a mapping")
        return Options(value, (*self.path, key), self._locate)
