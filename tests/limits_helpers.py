"""Helpers of the limits and resilience tests: config text, a call-capturing plugin, counters."""

from __future__ import annotations

import re
import time
from typing import Any

from core_helpers import CLIENT_KEY, LIMITED_KEY

from proxy.hookspecs import hookimpl
from proxy.limits.estimate import input_tokens
from proxy.testing import Gateway
from proxy.types import Call

DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")  # OpenAI's (Go's) duration format
CHAT = [{"role": "user", "content": "hello there"}]


def config(upstream_url: str, *, state: str = "", key_a: str = "", key_b: str = "", providers: str = "",
           routes: str | None = None) -> str:
    """Keys team-a (CLIENT_KEY) and team-b (LIMITED_KEY) with the given extra YAML (flow style)."""
    text = f"state: {{{state}}}\n" if state else ""
    text += (
        "clients:\n  keys:\n"
        f"    - {{name: team-a, key: \"{CLIENT_KEY}\"{', ' + key_a if key_a else ''}}}\n"
        f"    - {{name: team-b, key: \"{LIMITED_KEY}\"{', ' + key_b if key_b else ''}}}\n"
        "providers:\n"
        f"  up: {{type: openai, base_url: \"{upstream_url}/v1\", api_key: \"${{UPSTREAM_KEY}}\"}}\n" + providers
    )
    text += "routes:\n" + (routes if routes is not None else "  - {model: \"*\", to: up}\n")
    return text


class Capture:
    """A plugin that keeps every finished `Call` (rejections, attempts, cost)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    @hookimpl
    def log_request(self, call: Call) -> None:
        self.calls.append(call)

    def wait(self, count: int, timeout: float = 5.0) -> list[Call]:
        """The calls once `count` have finished (the stage runs after the response has left)."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"expected {count} finished calls, have {len(self.calls)}"
            time.sleep(0.01)
        return list(self.calls)


def snapshot(gw: Gateway, prefix: str, spent_key: str = "") -> dict[str, float]:
    """One scope's counters, read on the gateway's own loop."""
    limiter = gw.runtime.limiter
    assert limiter is not None
    return gw.call(limiter.counters.snapshot(prefix, spent_key))


def estimate(body: dict[str, Any]) -> int:
    """The tokens admission reserves for a chat body that sets max_tokens."""
    return input_tokens(body, 0) + int(body.get("max_tokens") or 0)


def flush(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as r:
        r.flushdb()
