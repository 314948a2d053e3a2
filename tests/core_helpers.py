"""Helpers shared by the core tests: keys, config text, raw HTTP and SSE parsing."""

from __future__ import annotations

import http.client
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.testing import Gateway

CLIENT_KEY = "sk-client-team-a-7f3c9e1d2b4a6f8e"
LIMITED_KEY = "sk-client-limited-5b2d8c4e6a1f3d7b"
UPSTREAM_KEY = "sk-upstream-9d8c7b6a5f4e3d2c1b0a"


def config_yaml(upstream_url: str, *, clients: bool = True, extra_providers: str = "",
                routes: str | None = None, server: str = "") -> str:
    """A config with `up` (the fake) and `demo`; routes default to everything => `up`."""
    text = ""
    if server:
        text += "server:\n" + server
    if clients:
        text += (
            "clients:\n"
            "  keys:\n"
            "    - {name: team-a, key: \"${CLIENT_KEY}\"}\n"
            "    - {name: limited, key: \"${LIMITED_KEY}\", models: [\"gpt-4o*\", \"demo-*\"]}\n"
        )
    text += (
        "providers:\n"
        f"  up: {{type: openai, base_url: {upstream_url}/v1, api_key: \"${{UPSTREAM_KEY}}\"}}\n"
        "  demo: {type: demo}\n" + extra_providers
    )
    text += "routes:\n" + (routes if routes is not None else "  - {model: \"*\", to: up}\n")
    return text


ENV = {"CLIENT_KEY": CLIENT_KEY, "LIMITED_KEY": LIMITED_KEY, "UPSTREAM_KEY": UPSTREAM_KEY}



@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def raw(method: str, url: str, body: bytes | Iterable[bytes] | None = None, headers: Mapping[str, str] | None = None,
        *, key: str | None = CLIENT_KEY, timeout: float = 20) -> RawResponse:
    """One HTTP request with exactly these bytes (no SDK in between)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs.setdefault("Authorization", f"Bearer {key}")
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        chunked = body is not None and not isinstance(body, bytes)  # an iterable: send it chunked
        conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
        resp = conn.getresponse()
        return RawResponse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def post_json(url: str, payload: Any, **kwargs: Any) -> RawResponse:
    return raw("POST", url, orjson.dumps(payload), **kwargs)


def sse_data(body: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order (`[DONE]` included)."""
    out = []
    for ev in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[5:].lstrip() for ln in ev.split(b"\n") if ln.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines))
    return out



def access_records(gw: Gateway, count: int, *, timeout: float = 3.0) -> list[dict[str, Any]]:
    return gw.wait_access_log(count, timeout=timeout)


def access_record(gw: Any, request_id: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """The access-log record of one request, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        for record in gw.access_log:
            if record["request_id"] == request_id:
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no access record for {request_id}: {gw.access_log}")
        time.sleep(0.01)


def until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    """Whether `predicate` became true within `timeout` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"relaygate exited with {proc.returncode}")
        try:
            if raw("GET", f"{url}/healthz", key=None, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("relaygate did not become healthy")
