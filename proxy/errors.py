"""Domain errors. Providers and plugins raise these; one middleware renders them.

Every error knows its HTTP status and the OpenAI error `type`/`code` it renders as, so
nothing outside this module decides how a failure looks on the wire. `retryable` tells
the core's fallback loop whether the next target may be tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status is not None:
            self.status = status  # type: ignore[misc]  # instance override of the class default
        if error_type is not None:
            self.type = error_type  # type: ignore[misc]
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


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    default_code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


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


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


# ---------------------------------------------------------------- upstream trouble


class UpstreamError(GatewayError):
    """The upstream failed in a way another target might not (5xx, bad gateway)."""

    status = 502
    type = "server_error"
    default_code = "upstream_error"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    status = 503
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    default_code = "upstream_timeout"


class RateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


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
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> GatewayError:
    """The domain error an upstream HTTP status means, keeping the status itself.

    Statuses without a class of their own (409, 424, 500, ...) keep their number on the
    nearest class: 4xx are the caller's problem, 5xx are retryable upstream trouble.
    """
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = UpstreamError if status >= 500 else InvalidRequest
    return cls(
        message,
        param=param,
        code=code,
        status=status,
        error_type=error_type,
        headers=headers,
    )


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and (exc.retryable or exc.status in (408, 429) or exc.status >= 500)
