"""A valid instance of a JSON Schema, for the demo provider's tool arguments and structured output.

Clients that validate what comes back (pydantic models from the SDK's `parse()`,
instructor, LangChain's tool parsing) fail on `{}`; the demo answers with values that
satisfy the schema's types, required properties, enums, consts, formats, lengths and
ranges, following `$ref`s. Deterministic: the same schema gives the same instance.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MAX_DEPTH = 24
_FORMATS = {
    "date-time": "2025-01-01T12:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00Z",
    "duration": "P1D",
    "email": "demo@example.com",
    "idn-email": "demo@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/demo",
    "iri": "https://example.com/demo",
    "uri-reference": "https://example.com/demo",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "regex": ".*",
}


def instance(schema: Any, hint: str = "demo") -> Any:
    """A value `schema` accepts (`hint` seeds free-text strings)."""
    return _Builder(schema if isinstance(schema, dict) else {}, hint).build(schema, "", 0, 0)


class _Builder:
    def __init__(self, root: dict[str, Any], hint: str) -> None:
        self.root = root
        self.hint = hint.strip() or "demo"

    def resolve(self, schema: Any) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 16:
            ref = schema["$ref"]
            target: Any = self.root
            if not ref.startswith("#"):
                return {}
            for part in ref[1:].strip("/").split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**(target if isinstance(target, dict) else {}), **rest}
            seen += 1
        return schema if isinstance(schema, dict) else {}

    def build(self, schema: Any, name: str, depth: int, index: int) -> Any:
        if schema is True or schema is None:
            return self.text(name, {}, index)
        s = self.resolve(schema)
        if "const" in s:
            return s["const"]
        if isinstance(s.get("enum"), list) and s["enum"]:
            return s["enum"][index % len(s["enum"])]
        for key in ("anyOf", "oneOf"):
            options = s.get(key)
            if isinstance(options, list) and options:
                return self.build(self._pick(options, depth), name, depth + 1, index)
        if isinstance(s.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in s.items() if k != "allOf"}
            for part in s["allOf"]:
                part = self.resolve(part)
                merged.setdefault("properties", {}).update(part.get("properties") or {})
                merged["required"] = [*merged.get("required", []), *(part.get("required") or [])]
                for key, value in part.items():
                    merged.setdefault(key, value)
            return self.build(merged, name, depth + 1, index)
        if "default" in s and depth > 0:
            return s["default"]
        kind = s.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[0]
        if kind is None:
            kind = "object" if "properties" in s else "array" if "items" in s or "prefixItems" in s else "string"
        if kind == "object":
            return self.obj(s, depth)
        if kind == "array":
            return self.array(s, name, depth)
        if kind in ("integer", "number"):
            return self.number(s, kind == "integer", index)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.text(name, s, index)

    def _pick(self, options: list[Any], depth: int) -> Any:
        """The first option that is not null (past the depth limit: one that ends the recursion)."""
        resolved = [self.resolve(o) for o in options]
        if depth >= _MAX_DEPTH:
            for option, r in zip(options, resolved, strict=True):
                if r.get("type") in ("null", "string", "number", "integer", "boolean") or "enum" in r:
                    return option
        for option, r in zip(options, resolved, strict=True):
            if r.get("type") != "null":
                return option
        return options[0]

    def obj(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        raw_props = s.get("properties")
        props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
        required = [r for r in s.get("required") or () if isinstance(r, str)]
        names = required if depth >= _MAX_DEPTH else list(dict.fromkeys([*props, *required]))
        out: dict[str, Any] = {}
        for i, key in enumerate(names):
            out[key] = self.build(props.get(key, {}), key, depth + 1, i)
        extra = s.get("additionalProperties")
        while len(out) < int(s.get("minProperties") or 0) and extra is not False:
            out[f"{self.hint[:16] or 'key'}_{len(out)}"] = self.build(
                extra if isinstance(extra, dict) else {}, "", depth + 1, len(out)
            )
        return out

    def array(self, s: dict[str, Any], name: str, depth: int) -> list[Any]:
        raw_prefix = s.get("prefixItems")
        prefix: list[Any] = raw_prefix if isinstance(raw_prefix, list) else []
        low = int(s.get("minItems") or 0)
        high = s.get("maxItems")
        count = max(low, len(prefix), 0 if depth >= _MAX_DEPTH else 1)
        if isinstance(high, int):
            count = min(count, high)
        items = s.get("items", {})
        out = []
        for i in range(count):
            schema = prefix[i] if i < len(prefix) else items
            if schema is False:
                break
            out.append(self.build(schema, name, depth + 1, i))
        return out

    def number(self, s: dict[str, Any], integer: bool, index: int) -> int | float:
        low = s.get("minimum")
        high = s.get("maximum")
        xlow = s.get("exclusiveMinimum")
        xhigh = s.get("exclusiveMaximum")
        step = s.get("multipleOf")
        value: float = 1 + index
        if isinstance(low, (int, float)):
            value = max(value, low)
        if isinstance(xlow, (int, float)) and not isinstance(xlow, bool):
            value = max(value, xlow + (1 if integer else 0.5))
        if isinstance(high, (int, float)):
            value = min(value, high)
        if isinstance(xhigh, (int, float)) and not isinstance(xhigh, bool):
            value = min(value, xhigh - (1 if integer else 0.5))
        if isinstance(step, (int, float)) and step > 0:
            value = math.ceil(value / step) * step
            if isinstance(high, (int, float)) and value > high:
                value -= step
        if integer:
            value = math.ceil(value) if isinstance(low, (int, float)) else math.floor(value)
            return int(value)
        return float(value)

    def text(self, name: str, s: dict[str, Any], index: int) -> str:
        fmt = s.get("format")
        value = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
        if not value:
            value = f"{self.hint} {index + 1}" if index else self.hint
        pattern = s.get("pattern")
        if isinstance(pattern, str):
            value = _matching(pattern, [value, name, "demo", "a", "A", "0", "1", "abc", "ABC", "a1", "demo-1"])
        low, high = int(s.get("minLength") or 0), s.get("maxLength")
        if len(value) < low:
            value = (value + "x" * low)[:low]
        if isinstance(high, int) and len(value) > high:
            value = value[:high]
        return value


def _matching(pattern: str, candidates: list[str]) -> str:
    try:
        compiled = re.compile(pattern)
    except re.error:
        return candidates[0]
    for candidate in (*candidates, _from_regex(pattern)):
        if candidate is not None and compiled.search(candidate):
            return candidate
    return candidates[0]


def _from_regex(pattern: str) -> str | None:
    """A shortest string the regex matches, built from its parse tree (None if unsure)."""
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser as parser  # type: ignore[attr-defined]

        return str(_emit(parser.parse(pattern), c))
    except Exception:  # a construct not handled here, or a future `re` internals change
        return None


def _emit(tree: Any, c: Any) -> str:
    out = []
    for op, arg in tree:
        if op is c.LITERAL:
            out.append(chr(arg))
        elif op is c.NOT_LITERAL:
            out.append("a" if arg != ord("a") else "b")
        elif op is c.ANY:
            out.append("a")
        elif op is c.IN:
            out.append(_one_of(arg, c))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, _high, sub = arg
            out.append(_emit(sub, c) * low)
        elif op is c.SUBPATTERN:
            out.append(_emit(arg[-1], c))
        elif op is c.ATOMIC_GROUP:
            out.append(_emit(arg, c))
        elif op is c.BRANCH:
            out.append(_emit(arg[1][0], c))
        elif op is c.CATEGORY:
            out.append(_category(arg, c))
        elif op is c.AT:
            continue
        else:
            raise ValueError(op)
    return "".join(out)


def _one_of(items: Any, c: Any) -> str:
    if items and items[0][0] is c.NEGATE:
        excluded = {chr(v) for op, v in items[1:] if op is c.LITERAL}
        return next(ch for ch in "aA0_-" if ch not in excluded)
    op, arg = items[0]
    if op is c.LITERAL:
        return chr(arg)
    if op is c.RANGE:
        return chr(arg[0])
    if op is c.CATEGORY:
        return _category(arg, c)
    raise ValueError(op)


def _category(arg: Any, c: Any) -> str:
    return {c.CATEGORY_DIGIT: "0", c.CATEGORY_NOT_DIGIT: "a", c.CATEGORY_SPACE: " ", c.CATEGORY_NOT_SPACE: "a",
            c.CATEGORY_WORD: "a", c.CATEGORY_NOT_WORD: "-"}.get(arg, "a")
