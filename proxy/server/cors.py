"""`server.cors`: browsers on the listed origins may call the gateway (off unless configured).

A browser asks first (a preflight `OPTIONS` with `Origin` and
`Access-Control-Request-Method`); the gateway answers it itself, never upstream, and then
marks each real response from an allowed origin as readable by that page. A client key
is still required on every real request: CORS only lets a page read the answers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..config.load import CorsSettings
from ..errors import PermissionDenied
from .passthrough import METHODS

#: Headers a page may read from answers: the ones OpenAI clients look at.
EXPOSED = ", ".join(
    (
        "x-request-id", "retry-after", "retry-after-ms", "openai-processing-ms", "openai-version",
        "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    )
)  # fmt: skip
ALLOWED_METHODS = ", ".join((*METHODS, "OPTIONS"))
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def preflight(request: web.Request, cors: CorsSettings, request_id: str) -> web.Response:
    """The answer to a browser's `OPTIONS` preflight (nothing goes upstream)."""
    origin = request.headers.get("Origin")
    if origin is None or not cors.allows(origin):
        raise PermissionDenied(f"The origin {origin!r} may not call this gateway.", code="cors_origin_not_allowed")
    headers = {
        "Access-Control-Allow-Origin": _allow_origin(cors, origin),
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Max-Age": str(cors.max_age),
        "Vary": _VARY,
        "x-request-id": request_id,
    }
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    if asked and _HEADER_LIST.match(asked):
        # The SDKs send their own (x-stainless-*, openai-beta, ...): whatever a page may
        # send, its key still decides what it may do.
        headers["Access-Control-Allow-Headers"] = asked
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return web.Response(status=204, headers=headers)


def response_hook(current: Callable[[], CorsSettings | None]) -> ResponseHook:
    """An `on_response_prepare` receiver marking answers to allowed origins as readable."""

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None:
            return
        cors = current()
        if cors is None or not cors.allows(origin) or request.method == "OPTIONS":
            return
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = _allow_origin(cors, origin)
        headers["Access-Control-Expose-Headers"] = EXPOSED
        headers.add("Vary", "Origin")
        if cors.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"

    return mark


def _allow_origin(cors: CorsSettings, origin: str) -> str:
    return "*" if "*" in cors.origins and not cors.allow_credentials else origin
