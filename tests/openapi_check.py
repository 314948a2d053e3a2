"""Validate JSON bodies against OpenAI's own OpenAPI spec (a copy in ../shared/openai-openapi).

The spec is OpenAPI 3.1 but still carries 3.0-style `nullable: true` in places; those are
rewritten into JSON Schema type unions once, when the spec is loaded (once per session).
A missing spec file is an error, never a skip: a conformance check that silently does not
run is worse than none.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_SPEC = Path("openai-openapi") / "openapi.yaml"


def _spec_path() -> Path:
    """`RELAYGATE_OPENAPI_SPEC`, else `shared/` beside the checkout, else the workplace's copy.

    A clean clone made elsewhere (a CI scratch directory) still finds the spec.
    """
    if env := os.environ.get("RELAYGATE_OPENAPI_SPEC"):
        return Path(env)
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / _SPEC, Path("/work/shared") / _SPEC]
    return next((p for p in candidates if p.is_file()), candidates[0])


SPEC_PATH = _spec_path()
SPEC_URI = "urn:openai:openapi"

SCHEMAS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Response",
    "ResponseItemList",
    "ResponseStreamEvent",
)


def _nullable_to_union(node: Any) -> Any:
    """Rewrite every 3.0 `nullable: true` into a 3.1 union with null (in place)."""
    if isinstance(node, list):
        for item in node:
            _nullable_to_union(item)
        return node
    if not isinstance(node, dict):
        return node
    for value in node.values():
        _nullable_to_union(value)
    if node.pop("nullable", False) is not True:
        return node
    kind = node.get("type")
    if isinstance(kind, str) and "$ref" not in node:
        node["type"] = [kind, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
    elif isinstance(kind, list):
        if "null" not in kind:
            kind.append("null")
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
    else:  # a $ref, allOf/anyOf/oneOf, or no type at all: wrap the whole schema
        inner = dict(node)
        node.clear()
        node["anyOf"] = [inner, {"type": "null"}]
    return node


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenAI OpenAPI spec not found at {path}; the conformance tests need it "
            "(set RELAYGATE_OPENAPI_SPEC, or put shared/openai-openapi beside the checkout)"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        return yaml.load(fh, Loader=loader)


@functools.lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    """The spec with `nullable` rewritten; loaded once per process."""
    return _nullable_to_union(_load_yaml(SPEC_PATH))


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@functools.cache
def validator(schema_name: str) -> OAS31Validator:
    if schema_name not in spec()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_PATH}")
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return OAS31Validator(schema, registry=_registry())


def validate(schema_name: str, instance: Any) -> Any:
    """Raise `jsonschema.ValidationError` (best match) unless `instance` conforms; return it."""
    v = validator(schema_name)
    errors = sorted(v.iter_errors(copy.deepcopy(instance)), key=lambda e: list(e.absolute_path))
    if errors:
        from jsonschema.exceptions import best_match

        err = best_match(errors)
        raise AssertionError(
            f"{schema_name} violation at {'/'.join(map(str, err.absolute_path)) or '<root>'}: "
            f"{err.message}\ninstance: {str(instance)[:2000]}"
        ) from err
    return instance


def validate_error(body: Any) -> dict[str, Any]:
    """An OpenAI error body: the spec's ErrorResponse, and all four keys present."""
    validate("ErrorResponse", body)
    error = body["error"]
    missing = {"message", "type", "param", "code"} - set(error)
    assert not missing, f"error body lacks {missing}: {body}"
    assert error["message"], body
    return error


# ---------------------------------------------------------------- the Responses API


@functools.lru_cache(maxsize=1)
def event_schemas() -> dict[str, str]:
    """Stream event `type` -> the spec's schema for it, from `ResponseStreamEvent`'s variants."""
    schemas = spec()["components"]["schemas"]
    out: dict[str, str] = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name]["properties"]["type"].get("enum", ()):
            out[kind] = name
    return out


def validate_response(body: Any) -> dict[str, Any]:
    """A `Response` object: the spec's schema, every required key present (null where allowed)."""
    validate("Response", body)
    required = spec()["components"]["schemas"]["Response"]["allOf"][-1]["required"]
    missing = [key for key in required if key not in body]
    assert not missing, f"Response lacks required {missing}"
    for item in body["output"]:
        for part in item.get("content") or ():
            if part.get("type") == "output_text":
                assert part["logprobs"] == [] or isinstance(part["logprobs"], list), part
    return body  # type: ignore[no-any-return]


def validate_event(event: dict[str, Any]) -> dict[str, Any]:
    """One stream event against the schema of its own type (and the union of them all)."""
    name = event_schemas().get(event.get("type", ""))
    assert name is not None, f"not an event type of the spec: {event.get('type')!r}"
    validate(name, event)
    if "response" in event:
        validate_response(event["response"])
    return event


def parse_response_stream(body: bytes) -> list[dict[str, Any]]:
    """The events of a Responses SSE body; each `event:` name must equal its data's `type`."""
    import orjson

    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        assert data, f"event without data: {block!r}"
        payload = orjson.loads(b"\n".join(data))
        assert name is None or name == payload.get("type"), (name, payload.get("type"))
        out.append(payload)
    return out


TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")


def validate_response_stream(events: list[dict[str, Any]], *, terminal: str | None = None) -> list[dict[str, Any]]:
    """A whole Responses stream: every event valid, sequence numbers 0, 1, 2, ..., the spec's order."""
    assert events, "empty stream"
    for i, event in enumerate(events):
        validate_event(event)
        assert event["sequence_number"] == i, f"event {i} has sequence_number {event['sequence_number']}"
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created", kinds
    assert kinds[1] == "response.in_progress", kinds
    assert kinds[-1] in TERMINAL, kinds
    assert not any(k in TERMINAL for k in kinds[:-1]), kinds
    if terminal is not None:
        assert kinds[-1] == terminal, kinds
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1, f"the response id changed within the stream: {ids}"
    opened: dict[int, str] = {}
    for event in events:
        if event["type"] == "response.output_item.added":
            assert event["output_index"] not in opened, event
            opened[event["output_index"]] = event["item"]["id"]
        elif "output_index" in event:
            assert opened.get(event["output_index"]) == event.get("item_id", event.get("item", {}).get("id")), event
    return events
