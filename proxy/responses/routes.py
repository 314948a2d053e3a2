"""The Responses API's routes, on the same journey as chat (auth, routing, limits, log).

`POST` goes through `Forwarder.model_call` with this package's plan. `GET`/`DELETE` of a
response and its `input_items` read the store: a translated response is answered from
it; a native one is forwarded to the provider that holds it, after the ownership check.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidRequest, MethodNotAllowed, NotFound
from ..server.journey import Forwarder
from ..server.runtime import Runtime
from ..types import PASSTHROUGH, RESPONSES, Call, Reply, Target
from .response import for_client
from .session import ENCRYPTED, derived, plan, store_of
from .store import Record
from .stream import replay

PREFIXES = ("/v1", "/openai/v1", "/openai")


def add_routes(router: web.UrlDispatcher, fwd: Forwarder) -> None:
    """Register the routes (before the `/v1/*` pass-through catch-all)."""
    routes = _Routes(fwd)
    create = fwd.model_call(RESPONSES, plan)
    one = fwd._handler(RESPONSES, routes.one)
    items = fwd._handler(RESPONSES, routes.input_items, "GET")
    cancel = fwd._handler(RESPONSES, routes.cancel, "POST")
    # OpenAI's other endpoints under /responses/ (input_tokens, compact) pass through.
    router.add_route("*", "/v1/{tail:responses/(?:input_tokens|compact)}", fwd.passthrough)
    for prefix in PREFIXES:
        router.add_route("*", f"{prefix}/responses", create)
        router.add_route("*", f"{prefix}/responses/{{response_id}}", one)
        router.add_route("*", f"{prefix}/responses/{{response_id}}/input_items", items)
        router.add_route("*", f"{prefix}/responses/{{response_id}}/cancel", cancel)
    router.add_route("*", "/openai/deployments/{deployment}/responses", create)


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def _includes(request: web.Request) -> bool:
    values = request.query.getall("include", []) + request.query.getall("include[]", [])
    return ENCRYPTED in values




async def _forward(request: web.Request, runtime: Runtime, call: Call, record: Record, path: str) -> Reply:
    """Send the client's GET/DELETE/cancel to the provider that stores a native response."""
    provider = runtime.config.providers.get(record.provider or "")
    if provider is None:
        raise NotFound(f"Response with id '{path.split('/')[1]}' not found.", param="response_id")
    up = derived(call, PASSTHROUGH, None, method=request.method, path=path, query=request.rel_url.raw_query_string)
    target = Target(provider=provider, model="")
    call.target = target
    return await provider.send(up, target)


class _Routes:
    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd

    async def _lookup(self, request: web.Request, runtime: Runtime, call: Call) -> tuple[str, Record]:
        response_id = request.match_info["response_id"]
        client = await self.fwd._authorize(runtime, call)
        record = await store_of(runtime).find(response_id, client.name)
        if record is None:
            raise not_found(response_id)
        if record.response is not None:
            call.model = record.response.get("model")
        return response_id, record

    async def _json(self, request: web.Request, call: Call, body: Any) -> web.StreamResponse:
        """Answer with `body`, written before the access log runs (as for every other route)."""
        return await self.fwd._respond(request, call, Reply(body=orjson.dumps(body)), None)

    async def one(self, request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
        if request.method not in ("GET", "DELETE"):
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use GET or DELETE.")
        response_id, record = await self._lookup(request, runtime, call)
        if record.native:
            reply = await _forward(request, runtime, call, record, f"responses/{response_id}")
            if request.method == "DELETE" and reply.status == 200:
                await store_of(runtime).delete(response_id)
            return await self.fwd._respond(request, call, reply, None)
        assert record.response is not None
        if request.method == "DELETE":
            await store_of(runtime).delete(response_id)
            return await self._json(request, call, {"id": response_id, "object": "response.deleted", "deleted": True})
        if request.query.get("stream", "").lower() == "true":
            return await self._replay(request, call, record.response)
        return await self._json(request, call, for_client(record.response, _includes(request)))

    async def _replay(self, request: web.Request, call: Call, response: dict[str, Any]) -> web.StreamResponse:
        """The stored response's event stream again (after `starting_after`, when given)."""
        after = request.query.get("starting_after")
        try:
            starting_after = -1 if after is None else int(after)
        except ValueError:
            raise InvalidRequest(f"Invalid 'starting_after': {after!r} is not an integer.",
                                 param="starting_after") from None  # fmt: skip
        call.stream = True
        reply = Reply(body=replay(response, _includes(request), starting_after), content_type="text/event-stream")
        return await self.fwd._respond(request, call, reply, None)


    async def input_items(self, request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
        response_id, record = await self._lookup(request, runtime, call)
        if record.native:
            reply = await _forward(request, runtime, call, record, f"responses/{response_id}/input_items")
            return await self.fwd._respond(request, call, reply, None)
        items = list(record.input or ())
        query = request.query
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"Invalid value for 'order': {order!r}; expected asc or desc.", param="order")
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise InvalidRequest("Invalid 'limit': expected an integer from 1 to 100.", param="limit")
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after:
            at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
            if at is None:
                raise InvalidRequest(f"Invalid 'after': no item '{after}' in this response's input.", param="after")
            items = items[at + 1 :]
        page = items[:limit]
        return await self._json(request, call, {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "",
            "has_more": len(items) > limit,
        })  # fmt: skip


    async def cancel(self, request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
        response_id, record = await self._lookup(request, runtime, call)
        if record.native:
            reply = await _forward(request, runtime, call, record, f"responses/{response_id}/cancel")
            return await self.fwd._respond(request, call, reply, None)
        raise InvalidRequest("Only responses created with background: true can be cancelled.", param="response_id",
                             code="invalid_request")  # fmt: skip
