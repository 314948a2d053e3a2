"""Bedrock error responses and event-stream exception frames → relaygate domain errors.

Bedrock names its errors (`x-amzn-ErrorType` header, `:exception-type` frame header);
the name decides the status the client sees, so the core's fallbacks work the same way
they do for OpenAI's own statuses. AWS's message text is kept for the caller's own
mistakes (validation, unknown model) and replaced for credential problems, where it can
name the account, role or key.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from proxy.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    as_upstream,
)

#: Bedrock error name → (error class, HTTP status the client sees).
_BY_NAME: dict[str, tuple[type[GatewayError], int]] = {
    "ValidationException": (InvalidRequest, 400),
    "AccessDeniedException": (PermissionDenied, 403),
    "UnrecognizedClientException": (PermissionDenied, 403),
    "InvalidSignatureException": (PermissionDenied, 403),
    "ExpiredTokenException": (PermissionDenied, 403),
    "IncompleteSignatureException": (PermissionDenied, 403),
    "ResourceNotFoundException": (ModelNotFound, 404),
    "ModelTimeoutException": (UpstreamTimeout, 408),
    "ModelErrorException": (UpstreamError, 502),
    "ModelStreamErrorException": (UpstreamError, 502),
    "ThrottlingException": (RateLimited, 429),
    "ModelNotReadyException": (RateLimited, 429),
    "ServiceQuotaExceededException": (RateLimited, 429),
    "ServiceUnavailableException": (UpstreamUnavailable, 503),
    "InternalServerException": (UpstreamError, 500),
    "ConflictException": (InvalidRequest, 409),
}
_AUTH_NAMES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
    }
)
_CODES = {
    PermissionDenied: "upstream_auth_failed",
    ModelNotFound: "model_not_found",
}


def error_name(raw: str | None) -> str:
    """`ValidationException:http://internal.amazon.com/...` → `ValidationException`.

    Event-stream frames use lower camel case (`throttlingException`); normalised here.
    """
    name = (raw or "").split(":", 1)[0].strip()
    return name[:1].upper() + name[1:] if name else ""


def bedrock_error(provider: str, name: str | None, message: str | None, status: int) -> GatewayError:
    """The domain error for one Bedrock failure.

    :param name: the Bedrock error type (header or frame), if any.
    :param status: the HTTP status Bedrock answered (used when the name is unknown).
    """
    key = error_name(name)
    cls, out_status = _BY_NAME.get(key, (None, status))
    if cls is None:
        if status >= 500:
            cls = UpstreamError
        elif status == 429:
            cls = RateLimited
        elif status in (401, 403):
            cls = PermissionDenied
        elif status == 404:
            cls = ModelNotFound
        else:
            cls = InvalidRequest
    if key in _AUTH_NAMES or (not key and status in (401, 403)):
        text = f"provider {provider!r}: Bedrock rejected the gateway's AWS credentials or permissions ({key or status})"
    elif cls is InvalidRequest or cls is ModelNotFound:
        text = message or f"provider {provider!r}: Bedrock answered {key or status}"
    else:
        text = f"provider {provider!r}: Bedrock {key or 'error'}" + (f": {message}" if message else "")
    code = _CODES.get(cls) or (key[:1].lower() + key[1:] if key else None)
    # Bedrock's answer, whatever class renders it: counted as upstream_bad_request, not client_*.
    return as_upstream(cls(text, status=out_status, code=code))


def error_from_response(provider: str, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """An HTTP error answer from the runtime or control plane."""
    name = headers.get("x-amzn-errortype")  # lower-case: the core's client lower-cases header names
    message = None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        raw = data.get("message") or data.get("Message")
        message = raw if isinstance(raw, str) else None
        if not name:
            raw_type = data.get("__type") or data.get("code")
            name = raw_type if isinstance(raw_type, str) else None
    err = bedrock_error(provider, name, message, status)
    retry = headers.get("retry-after")
    if retry and err.status == 429:
        err.headers["retry-after"] = retry
    return err


def error_from_frame(provider: str, headers: Mapping[str, object], payload: bytes) -> GatewayError:
    """An `:message-type: exception` (or `error`) event-stream frame."""
    name = headers.get(":exception-type") or headers.get(":error-code")
    message: str | None = None
    try:
        data = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        message = data["message"]
    elif isinstance(headers.get(":error-message"), str):
        message = str(headers[":error-message"])
    return bedrock_error(provider, name if isinstance(name, str) else None, message, 500)
