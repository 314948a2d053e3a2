"""Domain errors. Providers and plugins raise these; the Forwarder renders them.

Every error knows its HTTP status, the OpenAI error `type`/`code` it renders as, and its
`error_type`: one value of the closed set below, which the access log, the metrics and
the traces report. Nothing outside this module decides how a failure looks on the wire
or how it is counted. `retryable` tells the core's fallback loop whether the next
target may be tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, get_args

import orjson

#: The closed set of `error_type` values (DESIGN §4 "Telemetry"); empty on success.
ErrorType = Literal[
    "client_bad_request",
    "client_auth",
    "client_permission",
    "client_not_found",
    "client_too_large",
    "client_disconnected",
    "limit_requests",
    "limit_tokens",
    "limit_concurrency",
    "limit_budget",
    "upstream_bad_request",
    "upstream_auth",
    "upstream_not_found",
    "upstream_rate_limited",
    "upstream_capacity",
    "upstream_timeout",
    "upstream_unavailable",
    "upstream_error",
    "gateway_internal",
]
ERROR_TYPES: Final[tuple[ErrorType, ...]] = get_args(ErrorType)
#: What a request that ended because its client left is counted as.
CLIENT_DISCONNECTED: Final[ErrorType] = "client_disconnected"


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False
    #: How this failure is counted; an upstream's answer overrides it per instance.
    error_type: ErrorType = "gateway_internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        wire_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status is not None:
            self.status = status  # type: ignore[misc]  # instance override of the class default
        if wire_type is not None:
            self.type = wire_type  # type: ignore[misc]
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_sse(self) -> bytes:
        """The one event that ends a stream that failed after it started."""
        return b"event: error\ndata: " + self.to_json() + b"\n\n"


class ConfigError(Exception):
    """A configuration problem, already phrased as `file:line: key.path: what was expected`."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------- client-side (4xx)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    error_type: ErrorType = "client_bad_request"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"
    error_type: ErrorType = "client_auth"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    default_code = "model_not_allowed"
    error_type: ErrorType = "client_permission"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    error_type: ErrorType = "client_not_found"


class UnknownURL(NotFound):
    """OpenAI's answer to a path it does not serve: "Invalid URL (METHOD /path)"."""

    default_code = "unknown_url"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Invalid URL ({method} {path})")


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"
    error_type: ErrorType = "client_bad_request"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"
    error_type: ErrorType = "client_too_large"


# ---------------------------------------------------------------- upstream trouble


class UpstreamError(GatewayError):
    """The upstream failed in a way another target might not (5xx, bad gateway)."""

    status = 502
    type = "server_error"
    default_code = "upstream_error"
    retryable = True
    error_type: ErrorType = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    default_code = "upstream_unavailable"
    error_type: ErrorType = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    default_code = "upstream_timeout"
    error_type: ErrorType = "upstream_timeout"


class RateLimited(UpstreamError):
    """The upstream said 429 (its own quota, not one of the gateway's limits)."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    error_type: ErrorType = "upstream_rate_limited"


# ---------------------------------------------------------------- the gateway's own limits (429)


LimitKind = Literal["requests", "tokens", "concurrency", "budget"]
LimitScope = Literal["key", "route", "provider"]


class LimitExceeded(GatewayError):
    """A limit of the gateway's own said no (DESIGN §4 "Limits and budgets").

    Not retryable on another target when the key's or the route's limit is full; a full
    provider quota is `UpstreamCapacityExceeded` instead, which moves to the next target.
    """

    status = 429
    type = "rate_limit_error"
    _CODES: ClassVar[dict[str, str]] = {
        "requests": "rate_limit_exceeded",
        "tokens": "rate_limit_exceeded",
        "concurrency": "concurrency_limit_exceeded",
        "budget": "insufficient_quota",
    }

    def __init__(
        self,
        message: str,
        *,
        kind: LimitKind,
        scope: LimitScope,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=self._CODES[kind], headers=headers)
        self.kind: LimitKind = kind
        self.scope: LimitScope = scope
        self.error_type = f"limit_{kind}"  # type: ignore[assignment]  # limit_requests, limit_tokens, ...


class UpstreamCapacityExceeded(GatewayError):
    """Every target's provider quota (`providers.*.limits`) is full: not the client's fault."""

    status = 429
    type = "rate_limit_error"
    default_code = "upstream_capacity_exceeded"
    error_type: ErrorType = "upstream_capacity"


# ---------------------------------------------------------------- the gateway itself


class ShuttingDown(GatewayError):
    """The gateway stopped before the request finished: the drain's `server.shutdown_grace` ran out."""

    status = 503
    type = "server_error"
    default_code = "gateway_shutting_down"
    error_type: ErrorType = "gateway_internal"


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    408: UpstreamTimeout,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: UpstreamUnavailable,
    504: UpstreamTimeout,
}


def error_for_status(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    wire_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> GatewayError:
    """The domain error an upstream HTTP status means, keeping the status itself.

    Statuses without a class of their own (409, 424, 500, ...) keep their number on the
    nearest class: 4xx are the caller's problem, 5xx are retryable upstream trouble.
    """
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = UpstreamError if status >= 500 else InvalidRequest
    err = cls(message, param=param, code=code, status=status, wire_type=wire_type, headers=headers)
    err.error_type = upstream_error_type(status)
    return err


def upstream_error_type(status: int) -> ErrorType:
    """How an error the upstream answered with `status` is counted."""
    if status in (401, 403):
        return "upstream_auth"
    if status == 404:
        return "upstream_not_found"
    if status == 429:
        return "upstream_rate_limited"
    if status in (408, 504):
        return "upstream_timeout"
    if status == 503:
        return "upstream_unavailable"
    if status >= 500:
        return "upstream_error"
    return "upstream_bad_request"


def as_upstream(err: GatewayError) -> GatewayError:
    """Count `err` as the upstream's answer it was made from (by its status).

    For providers that build a client-side class from an upstream answer (a Bedrock
    `ValidationException` is an `InvalidRequest`): the client sees the same error, the
    metrics see `upstream_bad_request` rather than `client_bad_request`.
    """
    err.error_type = upstream_error_type(err.status)
    return err


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and (exc.retryable or exc.status in (408, 429) or exc.status >= 500)
