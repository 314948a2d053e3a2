"""Check a JSON request body against botocore's own Bedrock Runtime service model.

What AWS's front end checks before the model sees anything: structure members (no
unknown ones, required ones present), unions (exactly one member), types, enums,
lengths, ranges and patterns. Members bound to the URI, headers or query string must
not appear in the body.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Any

from botocore.loaders import Loader


@functools.cache
def service_model(name: str = "bedrock-runtime") -> dict[str, Any]:
    return Loader().load_service_model(name, "service-2")


@functools.cache
def _pattern(text: str) -> re.Pattern[str] | None:
    try:
        return re.compile(text)
    except re.error:
        return None


def input_shape(operation: str) -> str:
    return service_model()["operations"][operation]["input"]["shape"]


def validate_body(operation: str, body: Any) -> list[str]:
    """Problems with `body` as the JSON payload of `operation` (empty: valid)."""
    problems: list[str] = []
    shapes = service_model()["shapes"]
    shape = shapes[input_shape(operation)]
    if not isinstance(body, dict):
        return ["the request body must be a JSON object"]
    for key in body:
        member = shape["members"].get(key)
        if member is None:
            problems.append(f"unknown member '{key}'")
        elif "location" in member:
            problems.append(f"'{key}' belongs in the {member['location']}, not the body")
    for key, member in shape["members"].items():
        if "location" in member or key not in body:
            continue
        _check(body[key], member["shape"], key, shapes, problems)
    return problems


def _check(value: Any, name: str, path: str, shapes: dict[str, Any], problems: list[str]) -> None:
    shape = shapes[name]
    kind = shape["type"]
    if kind == "structure":
        if shape.get("document"):
            return
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object ({name})")
            return
        members = shape["members"]
        for key in value:
            if key not in members:
                problems.append(f"{path}: unknown member '{key}' of {name}")
        for key in shape.get("required", ()):
            if key not in value:
                problems.append(f"{path}: missing required member '{key}' of {name}")
        if shape.get("union") and len([k for k in value if k in members]) != 1:
            problems.append(f"{path}: {name} is a union; exactly one member must be set, got {sorted(value)}")
        for key, item in value.items():
            if key in members:
                _check(item, members[key]["shape"], f"{path}.{key}", shapes, problems)
    elif kind == "list":
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array ({name})")
            return
        _bounds(len(value), shape, path, "length", problems)
        for i, item in enumerate(value):
            _check(item, shape["member"]["shape"], f"{path}[{i}]", shapes, problems)
    elif kind == "map":
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object ({name})")
            return
        for key, item in value.items():
            _check(item, shape["value"]["shape"], f"{path}.{key}", shapes, problems)
    elif kind == "string":
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string ({name})")
            return
        if "enum" in shape and value not in shape["enum"]:
            problems.append(f"{path}: {value!r} is not one of {shape['enum']}")
        _bounds(len(value), shape, path, "length", problems)
        pattern = _pattern(shape["pattern"]) if "pattern" in shape else None
        if pattern is not None and not pattern.fullmatch(value):
            problems.append(f"{path}: {value!r} does not match {shape['pattern']}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: expected an integer ({name})")
            return
        _bounds(value, shape, path, "value", problems)
    elif kind in ("float", "double"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{path}: expected a number ({name})")
            return
        _bounds(value, shape, path, "value", problems)
    elif kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a boolean ({name})")
    elif kind == "blob":
        if not isinstance(value, str):
            problems.append(f"{path}: expected base64 text ({name})")
            return
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{path}: not valid base64")
            return
        _bounds(len(raw), shape, path, "length", problems)
    elif kind == "timestamp":
        return
    else:  # pragma: no cover - a new botocore type
        problems.append(f"{path}: unchecked shape type {kind}")


def _bounds(value: float, shape: dict[str, Any], path: str, what: str, problems: list[str]) -> None:
    if "min" in shape and value < shape["min"]:
        problems.append(f"{path}: {what} {value} is below the minimum {shape['min']}")
    if "max" in shape and value > shape["max"]:
        problems.append(f"{path}: {what} {value} is above the maximum {shape['max']}")
