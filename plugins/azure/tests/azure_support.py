"""Small helpers shared by the Azure tests (imported by module name, see conftest)."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.testing import Gateway

CLIENT_KEY = "rg-client-key-abcdef0123456789"
UPSTREAM_KEY = "azure-upstream-key-0123456789"


def access_record(gw: Gateway, count: int = 1) -> list[dict[str, Any]]:
    return gw.wait_access_log(count)


def raw_post(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """POST JSON without an SDK in between: status, headers and the exact bytes."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request(
            "POST",
            parts.path,
            body=orjson.dumps(payload),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sse_payloads(body: bytes) -> list[Any]:
    """The decoded `data:` payloads of an SSE body ("[DONE]" kept as the string)."""
    out: list[Any] = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out
