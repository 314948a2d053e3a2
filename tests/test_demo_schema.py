"""The demo's schema-valid instances, checked by a JSON Schema validator."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from proxy.builtin.demo_schema import instance


class Address(BaseModel):
    street: str = Field(min_length=5)
    zip: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    email: str | None
    role: Literal["admin", "user"]
    addresses: list[Address] = Field(min_length=1)
    scores: dict[str, float]
    manager: Person | None = None


SCHEMAS: list[dict[str, Any]] = [
    Person.model_json_schema(),
    {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}, "required": ["children"]},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "format": "uuid"}], "minItems": 2},
    {"type": ["null", "integer"], "minimum": -5, "maximum": -2},
    {"type": "number", "exclusiveMaximum": 0, "multipleOf": 0.25},
    {"type": "string", "minLength": 40, "maxLength": 41},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
    {"type": "array", "items": {"type": "integer"}, "minItems": 4, "uniqueItems": True},
    {},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instances_are_valid(schema: dict[str, Any]) -> None:
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(instance(schema))


def test_deterministic() -> None:
    schema = Person.model_json_schema()
    assert instance(schema) == instance(schema)
    Person.model_validate(instance(schema))
