"""Response helpers shared by the middleware and the handlers."""

from __future__ import annotations

import os
import re

from aiohttp import web

from ..errors import GatewayError

_REQUEST_ID = re.compile(r"^[\w.:\-]{1,128}$")
REQUEST_ID = web.RequestKey("request_id", str)


def request_id_of(request: web.Request) -> str:
    """The client's `x-request-id` if it is sane, else a new one; the same all request long."""
    rid: str | None = request.get(REQUEST_ID)
    if rid is None:
        rid = request.headers.get("x-request-id")
        if not (rid and _REQUEST_ID.match(rid)):
            rid = "req_" + os.urandom(12).hex()
        request[REQUEST_ID] = rid
    return rid


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id, **exc.headers}
    return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json", headers=headers)
