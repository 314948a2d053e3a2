"""Google error bodies, rendered as the OpenAI errors clients and fallbacks expect.

Vertex answers `[{"error": {"code": 401, "message": ..., "status": "UNAUTHENTICATED"}}]`
(a list) or the same object without the list. The canonical `status` decides the HTTP
status and the OpenAI code; 429 and 5xx stay retryable so a route's fallbacks run.
Messages of refused credentials and of server failures are replaced by the gateway's
own; client mistakes (400, 404) keep Google's message with the project id left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.errors import GatewayError, error_for_status

#: Google's canonical status -> (HTTP status, OpenAI error code).
GOOGLE_STATUS: dict[str, tuple[int, str | None]] = {
    "INVALID_ARGUMENT": (400, "invalid_argument"),
    "FAILED_PRECONDITION": (400, "failed_precondition"),
    "OUT_OF_RANGE": (400, "out_of_range"),
    "UNAUTHENTICATED": (401, "upstream_auth_failed"),
    "PERMISSION_DENIED": (403, "upstream_auth_failed"),
    "NOT_FOUND": (404, "model_not_found"),
    "ALREADY_EXISTS": (409, "already_exists"),
    "ABORTED": (409, "aborted"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_exceeded"),
    "CANCELLED": (499, "cancelled"),
    "UNIMPLEMENTED": (501, "unimplemented"),
    "INTERNAL": (500, "upstream_error"),
    "UNKNOWN": (500, "upstream_error"),
    "DATA_LOSS": (500, "upstream_error"),
    "UNAVAILABLE": (503, "upstream_unavailable"),
    "DEADLINE_EXCEEDED": (504, "upstream_timeout"),
}


def google_error_fields(body: bytes) -> tuple[str | None, str | None]:
    """(message, canonical status) from a Google error body, list-wrapped or not."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None
    message = err.get("message")
    status = err.get("status")
    return (message if isinstance(message, str) and message else None), (status if isinstance(status, str) else None)


def vertex_error(provider: str, project: str, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    message, google_status = google_error_fields(body)
    http_status, code = GOOGLE_STATUS.get(google_status or "", (status, None))
    if http_status == 499:  # not an HTTP status a client knows; the upstream gave up
        http_status = 502
    label = f"Google {google_status}" if google_status else f"upstream HTTP {status}"
    extra: dict[str, str] = {}
    param = None
    if http_status in (401, 403):
        message = f"provider {provider!r} rejected the gateway's Google credentials ({label})"
    elif http_status == 429:
        message = f"provider {provider!r} is rate limited ({label})"
        retry = headers.get("retry-after")
        if retry:
            extra["retry-after"] = retry
    elif http_status >= 500:
        message = f"provider {provider!r} failed ({label})"
    else:
        if message and project:
            message = message.replace(project, "<project>")
        message = message or f"provider {provider!r} answered HTTP {status}"
        if http_status == 404:
            param = "model"
    return error_for_status(http_status, message, param=param, code=code, headers=extra)
