"""Native pass-through of `/v1/responses`: the upstream's bytes, plus what the gateway must know.

The body and the events go to the client untouched. The gateway reads only the response
id (to remember which key and provider created it) and the usage (from the body, or from
the stream's terminal `response.completed` / `response.incomplete` / `response.failed`),
and turns a failure after the first event into the spec's `error` event.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from ..errors import GatewayError
from ..types import Call, Usage
from .stream import error_event

log = logging.getLogger("relaygate.responses")

_ID = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]+)"')
_TERMINAL = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
_SEQ = b'"sequence_number":'

#: Called once with the id the upstream gave the response.
OnId = Callable[[str], Awaitable[None]]


def body_id(body: bytes) -> str | None:
    """The `id` of a Response body, read from its head (OpenAI writes it first)."""
    m = _ID.match(body)
    if m:
        return m.group(1).decode()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _events(block: bytes, marker: bytes) -> list[dict[str, Any]]:
    """The parsed `data:` payloads of the events in `block` that contain `marker`."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    out = []
    for ev in block.split(b"\n\n"):
        if marker not in ev:
            continue
        for line in ev.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    data = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    out.append(data)
    return out


def _usage(response: Any) -> Usage | None:
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    return Usage(usage.get("input_tokens") or 0, usage.get("output_tokens") or 0)


async def relay(call: Call, upstream: AsyncGenerator[bytes, None], on_id: OnId | None
                ) -> AsyncGenerator[bytes, None]:  # fmt: skip
    """The upstream's events as they are; the id and usage are read on the way."""
    started = False
    next_seq = 0
    try:
        async for block in upstream:
            if on_id is not None and b'"response.created"' in block:
                for data in _events(block, b'"response.created"'):
                    response = data.get("response")
                    rid = response.get("id") if isinstance(response, dict) else None
                    if isinstance(rid, str):
                        await on_id(rid)
                        on_id = None
                        break
            for marker in _TERMINAL:
                if marker in block:
                    for data in _events(block, marker):
                        usage = _usage(data.get("response"))
                        if usage is not None:
                            call.usage = usage
            at = block.rfind(_SEQ)
            if at >= 0:
                digits = re.match(rb"\s*(\d+)", block[at + len(_SEQ) : at + len(_SEQ) + 24])
                if digits:
                    next_seq = int(digits.group(1)) + 1
            started = True
            yield block
    except GatewayError as err:
        if not started:
            raise
        call.error = err.code or err.type
        call.error_type = err.error_type
        log.warning("request %s: stream failed after it started: %s", call.request_id, err.message)
        yield error_event(err, next_seq)
    finally:
        await upstream.aclose()
