"""Small helpers shared by the Azure tests (imported by module name, see conftest)."""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

CLIENT_KEY = "rg-client-key-abcdef0123456789"
UPSTREAM_KEY = "azure-upstream-key-0123456789"


def access_record(gw: Any, count: int = 1, *, timeout: float = 3.0) -> list[dict[str, Any]]:
    """The access log once it holds `count` records (they are written after the response ends)."""
    deadline = time.monotonic() + timeout
    while len(records := gw.access_log) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} access records, have {records}")
        time.sleep(0.01)
    return records


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
