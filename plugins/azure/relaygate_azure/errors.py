"""Azure OpenAI error bodies, rendered as the OpenAI errors clients and fallbacks expect.

Azure answers `{"error": {"code", "message", "param", "type", "innererror"?}}` with codes
of its own ("DeploymentNotFound", "429", "401", "content_filter"), and its gateway
sometimes `{"statusCode": 401, "message": ...}`. Statuses keep their meaning (so 429 and
5xx fall back, 400 does not); codes become OpenAI's; a 429 keeps a `retry-after` header
in whole seconds (Azure may send only `retry-after-ms`). Messages from a refused
credential are replaced, so nothing about the gateway's key travels back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.errors import GatewayError, InvalidRequest, ModelNotFound, RateLimited, as_upstream, error_for_status


class ContentFiltered(InvalidRequest):
    """Azure's content filter refused the prompt; keeps Azure's `innererror` for clients that read it."""

    default_code = "content_filter"

    def __init__(self, message: str, *, innererror: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.innererror = innererror

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.innererror is not None:
            out["error"]["innererror"] = self.innererror
        return out


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    err = data.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    if "message" in data:  # Azure's API gateway: {"statusCode": 401, "message": "..."}
        return {"message": data.get("message"), "code": str(data.get("statusCode") or "")}
    return {}


def _text(err: Mapping[str, Any], key: str) -> str | None:
    value = err.get(key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def retry_after_seconds(headers: Mapping[str, str]) -> str | None:
    """`retry-after` in whole seconds, from Azure's `retry-after` or `retry-after-ms`."""
    value = headers.get("retry-after")
    if value and value.strip().isdigit():
        return value.strip()
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return str(max(1, math.ceil(float(millis) / 1000)))
        except ValueError:
            pass
    return value.strip() if value else None  # an HTTP date is valid too


def azure_error(provider: str, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """Azure's error answer as the client sees it, counted as the upstream's (`upstream_*`)."""
    return as_upstream(_azure_error(provider, status, body, headers))


def _azure_error(provider: str, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    err = _error_object(body)
    message = _text(err, "message")
    code = _text(err, "code")
    param = _text(err, "param")
    etype = _text(err, "type")
    inner = err.get("innererror")

    if status in (401, 403):
        detail = f", {code}" if code and not code.isdigit() else ""
        return error_for_status(
            status,
            f"provider {provider!r} rejected the gateway's credentials (upstream HTTP {status}{detail})",
            code="upstream_auth_failed",
        )
    if status == 429:
        retry = retry_after_seconds(headers)
        when = f"; retry after {retry} seconds" if retry and retry.isdigit() else ""
        return RateLimited(
            f"provider {provider!r} is rate limited{when}",
            headers={"retry-after": retry} if retry else None,
        )
    if status == 404 and code == "DeploymentNotFound":
        return ModelNotFound(
            f"provider {provider!r} has no deployment by that name (Azure DeploymentNotFound)", param="model"
        )
    is_filter = code == "content_filter" or (
        isinstance(inner, dict) and inner.get("code") == "ResponsibleAIPolicyViolation"
    )
    if status == 400 and is_filter:
        return ContentFiltered(
            message or "The prompt was filtered by Azure OpenAI's content management policy.",
            param=param or "prompt",
            innererror=inner if isinstance(inner, dict) else None,
        )
    if status >= 500:
        return error_for_status(status, f"provider {provider!r} failed (upstream HTTP {status})")
    if code is not None and code.isdigit():
        code = None  # Azure repeats the status as the code; OpenAI's codes are words
    return error_for_status(
        status,
        message or f"provider {provider!r} answered HTTP {status}",
        param=param,
        code=code,
        wire_type=etype,
    )
