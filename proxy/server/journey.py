"""The per-request journey: authenticate → route → rewrite → guardrails → provider → log.

Fallbacks are taken while nothing has reached the client: on a retryable error from
`send`, or from a stream before its first chunk (the first chunk is read before the
response headers are sent, which costs no latency: the client is waiting for it anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from ..errors import (
    CLIENT_DISCONNECTED,
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    PermissionDenied,
    ShuttingDown,
    UnknownURL,
)
from ..types import MODELS, PASSTHROUGH, UNMATCHED, Call, Client, Reply
from . import attempts, cors, passthrough
from .attempts import Send, send_to_provider
from .body import check_body, duplicates_model, nested_too_deeply, parse_json, read_body
from .replies import error_response, request_id_of
from .runtime import Runtime

if TYPE_CHECKING:
    from .app import GatewayState

log = logging.getLogger("relaygate")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Work = Callable[[web.Request, Runtime, Call], Awaitable[web.StreamResponse]]
__all__ = ["Forwarder", "Plan", "Send", "send_to_provider"]
#: Prepares a model call after `rewrite_request` and picks how its attempts are sent
#: (the Responses API translates per target).
Plan = Callable[[Runtime, Call], Awaitable[Send]]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Forwarder:
    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway

    # -------------------------------------------------------------- handlers

    def _handler(self, endpoint: str, work: Work, method: str | None = None) -> Handler:
        """Wrap `work` with what every request gets: the method check, a runtime held to
        the end, one `Call`, errors rendered as OpenAI JSON, and the `log_request` stage.

        Registered for every method, so a wrong one gets OpenAI's 405 shape rather than
        falling through to the pass-through route."""

        async def handle(request: web.Request) -> web.StreamResponse:
            runtime = self.gateway.current
            runtime.enter()
            task = self.gateway.drain.track()
            call = _new_call(request, runtime, endpoint)
            if runtime.tracing is not None:
                runtime.tracing.begin(call, request)
            try:
                if request.method == "OPTIONS" and self.gateway.cors_hooked and (allowed := runtime.config.server.cors):
                    call.status = 204  # a browser's CORS preflight: answered here, never upstream
                    return await _send(request, cors.preflight(request, allowed, call.request_id), call)
                if method is not None and request.method != method:
                    raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {method}.")
                return await work(request, runtime, call)
            except GatewayError as exc:
                return await self._fail(request, call, exc)
            except asyncio.CancelledError:
                if call.first_byte is None and self._cut_off():  # the drain's grace is over: a 503 instead
                    return await self._fail(request, call, _shutting_down())
                call.error = call.error or "client_disconnected"
                call.error_type = call.error_type or CLIENT_DISCONNECTED
                call.status = call.status or 499
                raise
            except Exception as exc:
                err: GatewayError | None = nested_too_deeply(exc)
                if err is None:
                    log.exception("request %s: unhandled error on %s %s", call.request_id, request.method, request.path)
                    err = GatewayError("The gateway failed to process the request.", code="internal_error")
                return await self._fail(request, call, err)
            finally:
                try:
                    await self._finish(runtime, call)  # may be cancelled if the client has gone: log anyway
                finally:
                    await self._log(runtime, call)
                    runtime.leave()
                    self.gateway.drain.untrack(task)

        return handle

    def model_call(self, endpoint: str, plan: Plan | None = None) -> Handler:
        async def work(request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
            # Who is calling is decided from the headers, before a byte of the body is
            # read: a keyless client cannot hold the connection open by sending it slowly.
            client = await self._authorize(runtime, call)
            server = runtime.config.server
            call.raw_body = await read_body(request, server.max_body_size, server.body_timeout)
            body = parse_json(call.raw_body)
            deployment = request.match_info.get("deployment")
            if deployment and body.get("model") != deployment:
                body["model"] = deployment  # Azure-style: the path names the model
                call.body_dirty = True
            call.body = body
            if duplicates_model(call.raw_body):
                call.body_dirty = True
            call.model, call.stream = check_body(endpoint, body)
            _permit(client, call.model)
            await self._route(runtime, call)
            await runtime.chain.rewrite_request(call)
            send = await plan(runtime, call) if plan is not None else send_to_provider
            reply, first = await self._attempt(runtime, call, send)
            return await self._respond(request, call, reply, first)

        return self._handler(endpoint, work, "POST")

    async def _passthrough(self, request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
        if request.method not in passthrough.METHODS:
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}; use {passthrough.ALLOW}.",
                headers={"Allow": passthrough.ALLOW},
            )
        call.path = request.rel_url.raw_path[4:]  # after "/v1/", percent-encoded as the client sent it
        if not passthrough.is_safe_path(call.path):
            # The upstream would resolve it, and the call could leave its /v1 base URL.
            raise UnknownURL(request.method, request.path)
        client = await self._authorize(runtime, call)  # from the headers, before the body
        if request.method == "POST":
            server = runtime.config.server
            call.raw_body = await read_body(request, server.max_body_size, server.body_timeout)
        if call.raw_body[:1] == b"{" and request.content_type == "application/json":
            call.body = parse_json(call.raw_body)
            call.stream = call.body.get("stream") is True
            model = call.body.get("model")
            if isinstance(model, str) and passthrough.names_model(request.method, call.path):
                call.model = model  # decided by the route: elsewhere a body's model means nothing
                _permit(client, model)
                call.body_dirty = duplicates_model(call.raw_body)
        if call.model is None and client.models is not None:
            # Model-less routes (files, batches, ...) would run on the gateway's own
            # upstream credentials outside the key's model allow-list.
            raise PermissionDenied(
                f"The key '{client.name}' is limited to certain models and may not use /v1/{call.path}."
            )
        targets = await runtime.chain.route(call) or []
        call.targets = [t for t in targets if t.provider.supports_passthrough]
        if not call.targets:
            if targets:  # routed, to providers that cannot serve this endpoint
                names = ", ".join(sorted({t.provider_name for t in targets}))
                raise InvalidRequest(
                    f"/v1/{call.path} is not supported by the provider(s) this request routes to ({names}).",
                    param="model" if call.model else None,
                    code="unsupported_endpoint",
                )
            if call.model is not None:
                raise ModelNotFound(
                    f"The model '{call.model}' does not exist or you do not have access to it.", param="model"
                )
            raise UnknownURL(request.method, f"/v1/{call.path}")
        await runtime.chain.rewrite_request(call)
        reply, first = await self._attempt(runtime, call)
        return await self._respond(request, call, reply, first)

    async def _list_models(self, request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
        client = await self._authorize(runtime, call)
        models = await runtime.models_for(client)
        return _json({"object": "list", "data": [m.to_dict() for m in models]}, call)

    async def _get_model(self, request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
        call.model = request.match_info["model"]
        client = await self._authorize(runtime, call)
        info = await runtime.find_model(client, call.model)
        if info is None:
            raise ModelNotFound(f"The model '{call.model}' does not exist", param="model")
        return _json(info.to_dict(), call)

    @property
    def passthrough(self) -> Handler:
        return self._handler(PASSTHROUGH, self._passthrough)

    @property
    def not_found(self) -> Handler:
        """Paths no route serves: OpenAI's 404, through the same log as every request."""

        async def work(request: web.Request, runtime: Runtime, call: Call) -> web.StreamResponse:
            raise UnknownURL(request.method, request.path)

        return self._handler(UNMATCHED, work)

    @property
    def list_models(self) -> Handler:
        return self._handler(MODELS, self._list_models, "GET")

    @property
    def get_model(self) -> Handler:
        return self._handler(MODELS, self._get_model, "GET")

    # -------------------------------------------------------------- stages

    async def _authorize(self, runtime: Runtime, call: Call) -> Client:
        client = await runtime.chain.authenticate(call)
        if client is None:
            raise AuthenticationFailed("No plugin accepted the request's credentials.")
        call.client = client
        if call.model is not None:
            _permit(client, call.model)
        return client

    async def _route(self, runtime: Runtime, call: Call) -> None:
        targets = await runtime.chain.route(call)
        if not targets:
            raise ModelNotFound(
                f"The model '{call.model}' does not exist or you do not have access to it.", param="model"
            )
        call.targets = targets

    async def _attempt(
        self, runtime: Runtime, call: Call, send: Send = send_to_provider
    ) -> tuple[Reply, bytes | None]:
        """Limits, strategy, breaker, retries and fallbacks: `proxy.server.attempts`."""
        if runtime.tracing is not None:
            send = runtime.tracing.wrap(send)  # a span per attempt
        return await attempts.attempt(runtime, call, send)

    # -------------------------------------------------------------- responses

    async def _respond(self, request: web.Request, call: Call, reply: Reply, first: bytes | None) -> web.StreamResponse:
        headers = {"Content-Type": reply.content_type, "x-request-id": call.request_id}
        if reply.headers:
            headers.update(reply.headers)
        call.status = reply.status
        if reply.stream is None:
            return await _send(request, web.Response(status=reply.status, body=reply.body, headers=headers), call)

        stream = reply.stream
        is_sse = reply.content_type.startswith("text/event-stream")
        if is_sse:
            headers.update(_SSE_HEADERS)
        sresp = web.StreamResponse(status=reply.status, headers=headers)
        try:
            await sresp.prepare(request)
            call.first_byte = time.perf_counter()
            timeout = call.config.server.write_timeout
            if first:
                await _write(request, sresp, first, timeout)
            async for chunk in stream:
                await _write(request, sresp, chunk, timeout)
        except ClientTooSlow:
            log.warning("request %s: the client took over %g s to accept more; dropped", call.request_id, timeout)
            call.error = "client_write_timeout"
            call.error_type = CLIENT_DISCONNECTED
            if request.transport is not None:
                request.transport.abort()
            return sresp
        except ConnectionResetError:
            # The client left: closing the stream (below) closes the upstream request.
            call.error = "client_disconnected"
            call.error_type = CLIENT_DISCONNECTED
            return sresp
        except (Exception, asyncio.CancelledError) as exc:
            err = exc if isinstance(exc, GatewayError) else None
            if isinstance(exc, asyncio.CancelledError):
                if not self._cut_off():
                    call.error = "client_disconnected"
                    call.error_type = CLIENT_DISCONNECTED
                    raise
                err = _shutting_down()  # the drain's grace is over: the stream ends with an error event
            if err is None:
                log.exception("request %s: stream failed", call.request_id)
                err = GatewayError("The stream failed in the gateway.", code="internal_error")
            call.error = err.code or err.type
            call.error_type = err.error_type
            log.warning("request %s: stream failed after it started: %s", call.request_id, err.message)
            if is_sse:
                with contextlib.suppress(ConnectionResetError):
                    await sresp.write(err.to_sse())
        finally:
            await stream.aclose()
        with contextlib.suppress(ConnectionResetError):
            # Clients may hang up once they have the last event (the SDK does on [DONE]):
            # only the end-of-body marker is lost, the answer itself was delivered.
            await sresp.write_eof()
        return sresp

    async def _fail(self, request: web.Request, call: Call, exc: GatewayError) -> web.StreamResponse:
        call.status = exc.status
        call.error = exc.code or exc.type
        call.error_type = exc.error_type
        return await _send(request, error_response(exc, call.request_id), call)

    async def _finish(self, runtime: Runtime, call: Call) -> None:
        try:
            await attempts.finish(runtime, call)
        except Exception:
            log.exception("request %s: settling its limits failed", call.request_id)

    async def _log(self, runtime: Runtime, call: Call) -> None:
        try:
            await runtime.chain.log_request(call)
        except Exception:
            log.exception("log_request hook failed")
        try:
            if runtime.metrics is not None:
                runtime.metrics.record(call)
            if runtime.tracing is not None:
                runtime.tracing.finish(call)
        except Exception:
            log.exception("recording telemetry failed")

    def _cut_off(self) -> bool:
        """Whether a cancellation is the drain's (its grace ran out), not a client that left."""
        if not self.gateway.drain.cut_off:
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled here: the request goes on to write its last words
        return True


def _permit(client: Client, model: str) -> None:
    """Refuse a model outside the key's allow-list."""
    if not client.allows(model):
        raise PermissionDenied(f"The key '{client.name}' is not allowed to use the model '{model}'.", param="model")


async def _send(request: web.Request, resp: web.Response, call: Call) -> web.Response:
    """Write a whole response now, so `log_request` runs after it has left."""
    try:
        await resp.prepare(request)
        call.first_byte = time.perf_counter()
        await resp.write_eof()
    except ConnectionResetError:
        # The client left. Returning the response lets aiohttp finish quietly instead
        # of logging a 500 that nobody would receive.
        call.error = "client_disconnected"
        call.error_type = CLIENT_DISCONNECTED
    return resp


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("The gateway is shutting down and could not finish this request in time; retry it.")


class ClientTooSlow(Exception):
    """The client did not take the next bytes within `server.write_timeout`."""


#: Below this many bytes queued towards the client a write cannot block: no timer is armed.
_WRITE_QUEUE = 1 << 16


async def _write(request: web.Request, sresp: web.StreamResponse, chunk: bytes, timeout: float) -> None:
    """Write one chunk; a client that stops reading is dropped after `timeout` seconds."""
    transport = request.transport
    if transport is None or transport.get_write_buffer_size() + len(chunk) <= _WRITE_QUEUE:
        await sresp.write(chunk)
        return
    try:
        async with asyncio.timeout(timeout):
            await sresp.write(chunk)
    except TimeoutError:
        raise ClientTooSlow from None


def _new_call(request: web.Request, runtime: Runtime, endpoint: str) -> Call:
    path = request.path
    return Call(
        request_id=request_id_of(request),
        endpoint=endpoint,
        method=request.method,
        path=endpoint if endpoint not in (PASSTHROUGH, UNMATCHED) else path,
        query_string=request.rel_url.raw_query_string,  # forwarded as sent: decoding could split or inject
        headers=request.headers,
        config=runtime.config,
    )


def _json(body: object, call: Call) -> web.Response:
    call.status = 200
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers={"x-request-id": call.request_id}
    )
