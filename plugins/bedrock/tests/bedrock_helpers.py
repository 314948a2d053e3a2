"""Constants, config text, raw HTTP and the OpenAPI check for the Bedrock plugin's tests."""

from __future__ import annotations

import base64
import http.client
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import orjson

AKID = "AKIDTEST"
SECRET = "fake-secret-key-wJalrXUtnFEMI-K7MDENG"
API_KEY = "bedrock-api-key-ABSKQmVkcm9ja0FQSUtleS1"
CLIENT_KEY = "sk-client-bedrock-tests-0123456789"
CLAUDE = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
SECRETS = (SECRET, API_KEY)


def gateway_env() -> dict[str, str]:
    return {"CLIENT_KEY": CLIENT_KEY, "BEDROCK_SECRET": SECRET, "BEDROCK_API_KEY": API_KEY}


def config_yaml(url: str, *, provider_extra: str = "", routes: str = "", providers: str = "",
                catch_all: bool = False) -> str:
    """Gateway config: provider `bedrock` (Converse) and `bedrock-oai`, both on the fake."""
    return (
        "clients:\n"
        "  keys:\n"
        "    - {name: tests, key: \"${CLIENT_KEY}\"}\n"
        "providers:\n"
        "  bedrock:\n"
        "    type: bedrock\n"
        "    region: us-west-2\n"
        f"    endpoint_url: {url}\n"
        f"    control_endpoint_url: {url}\n"
        f"    access_key_id: {AKID}\n"
        "    secret_access_key: ${BEDROCK_SECRET}\n"
        + provider_extra
        + "  bedrock-oai:\n"
        "    type: bedrock-openai\n"
        f"    base_url: {url}/openai/v1\n"
        "    api_key: ${BEDROCK_API_KEY}\n"
        + providers
        + "routes:\n"
        + routes
        + f"  - model: claude\n    to: {{provider: bedrock, model: {CLAUDE}}}\n"
        "  - model: deepseek\n    to: {provider: bedrock, model: us.deepseek.r1-v1:0}\n"
        "  - model: nova\n    to: {provider: bedrock, model: amazon.nova-lite-v1:0}\n"
        "  - model: cohere\n    to: {provider: bedrock, model: cohere.embed-english-v3}\n"
        "  - model: cohere-v4\n    to: {provider: bedrock, model: cohere.embed-v4:0}\n"
        "  - model: titan\n    to: {provider: bedrock, model: amazon.titan-embed-text-v2:0}\n"
        "  - model: titan-v1\n    to: {provider: bedrock, model: amazon.titan-embed-text-v1}\n"
        "  - model: gpt-oss\n    to: {provider: bedrock-oai, model: openai.gpt-oss-20b-1:0}\n"
        + ("  - model: \"*\"\n    to: bedrock\n" if catch_all else "")
    )


class Raw:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


def post(base_url: str, path: str, payload: Any, *, raw_body: bytes | None = None,
         key: str = CLIENT_KEY) -> Raw:
    """A POST with the standard library, for inputs the SDK would refuse to send."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        body = raw_body if raw_body is not None else orjson.dumps(payload)
        conn.request("POST", parts.path + path, body=body,
                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def sse_json(body: bytes) -> tuple[list[dict[str, Any]], bool, list[dict[str, Any]]]:
    """(data chunks, whether [DONE] came, error events) of an SSE body."""
    chunks, errors, done = [], [], False
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not event.strip():
            continue
        lines = event.split(b"\n")
        is_error = any(line.startswith(b"event: error") for line in lines)
        data = b"\n".join(line[5:].lstrip() for line in lines if line.startswith(b"data:"))
        if data == b"[DONE]":
            done = True
        elif is_error:
            errors.append(orjson.loads(data))
        elif data:
            chunks.append(orjson.loads(data))
    return chunks, done, errors


def _openapi() -> ModuleType:
    """The core suite's OpenAPI checker, loaded by path (test dirs are not packages)."""
    if "openapi_check" in sys.modules:
        return sys.modules["openapi_check"]
    path = Path(__file__).resolve().parents[3] / "tests" / "openapi_check.py"
    spec = importlib.util.spec_from_file_location("openapi_check", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules["openapi_check"] = module
    spec.loader.exec_module(module)
    return module


def validate(schema: str, instance: Any) -> Any:
    return _openapi().validate(schema, instance)


def validate_error(body: Any) -> dict[str, Any]:
    return _openapi().validate_error(body)


def wait_access(gw: Any, count: int = 1, timeout: float = 3.0) -> list[dict[str, Any]]:
    """The access log once it holds `count` records (it is written after the response ends)."""
    deadline = time.monotonic() + timeout
    while len(gw.access_log) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return gw.access_log


def assert_no_secrets(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in SECRETS:
            assert secret not in blob, "a secret leaked"
