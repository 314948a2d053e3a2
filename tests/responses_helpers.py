"""Shared by the Responses API tests: a config with native and translated targets, stream reading."""

from __future__ import annotations

from typing import Any

import orjson
from core_helpers import CLIENT_KEY, LIMITED_KEY, RawResponse, post_json
from openapi_check import parse_response_stream, validate_error, validate_response, validate_response_stream

from proxy.testing import Gateway

OTHER_KEY = "sk-client-team-b-3c1d9e7f5a2b4c6d"


def responses_config(upstream_url: str, *, extra: str = "", routes: str = "", state: str = "") -> str:
    """`up` is OpenAI itself (native), `chat` the same fake seen as a chat-only server (translated)."""
    return f"""
clients:
  keys:
    - {{name: team-a, key: "${{CLIENT_KEY}}"}}
    - {{name: team-b, key: {OTHER_KEY}}}
    - {{name: limited, key: "${{LIMITED_KEY}}", models: ["gpt-4o*", "demo-*"]}}
providers:
  up: {{type: openai, base_url: {upstream_url}/v1, api_key: "${{UPSTREAM_KEY}}"}}
  chat: {{type: openai, base_url: {upstream_url}/v1, api_key: "${{UPSTREAM_KEY}}", responses: translate}}
  demo: {{type: demo}}
{extra}
routes:
{routes}
  - {{model: "demo-*", to: demo}}
  - {{model: "chat-*", to: {{provider: chat, model: gpt-4o-mini}}}}
  - {{model: "*", to: up}}
{state}
"""


def stream_events(gw: Gateway, payload: dict[str, Any], key: str = CLIENT_KEY, *,
                  terminal: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """POST a streamed request with raw HTTP; the events, checked against the spec."""
    resp = post_json(f"{gw.base_url}/responses", {**payload, "stream": True}, key=key)
    assert resp.status == 200, resp.body
    assert (resp.header("content-type") or "").startswith("text/event-stream")
    assert b"[DONE]" not in resp.body
    return validate_response_stream(parse_response_stream(resp.body), terminal=terminal)


def create(gw: Gateway, payload: dict[str, Any], key: str = CLIENT_KEY) -> dict[str, Any]:
    resp = post_json(f"{gw.base_url}/responses", payload, key=key)
    assert resp.status == 200, resp.body
    return validate_response(resp.json)


def error_of(resp: RawResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    return validate_error(orjson.loads(resp.body))


__all__ = ["CLIENT_KEY", "LIMITED_KEY", "OTHER_KEY", "create", "error_of", "responses_config", "stream_events"]
