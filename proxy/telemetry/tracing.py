"""OpenTelemetry traces with the GenAI semantic conventions, exported over OTLP/HTTP.

Imported only when a config sets `telemetry.otlp` (the `relaygate[otel]` extra). Each
request is one SERVER span, continuing the client's `traceparent` when it sent one; each
upstream attempt (first try, retry or fallback) is a CLIENT child span whose context
travels upstream as `traceparent`. Spans are handed to a batch processor, whose thread
does the export: the event loop never waits for the collector.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__
from ..errors import CLIENT_DISCONNECTED, GatewayError
from ..types import Call, Reply, Target
from .names import OPERATIONS
from .settings import OtlpSettings

if TYPE_CHECKING:
    from ..server.journey import Send

log = logging.getLogger("relaygate")
_EXPORT_TIMEOUT = 5.0  # seconds; also bounds how long a shutdown waits for a collector that is down


@dataclass(slots=True, eq=False)
class CallTrace:
    """The spans of one request: its own, and the attempts not yet ended (by index in `call.attempts`)."""

    span: Span
    context: Context
    route: str
    open: list[tuple[Span, int]] = field(default_factory=list)


class Tracing:
    """One tracer provider per `telemetry.otlp` setting (a reload that changes it makes a new one)."""

    def __init__(self, settings: OtlpSettings, processor: SpanProcessor | None = None) -> None:
        self.settings = settings
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        if processor is None:
            exporter = OTLPSpanExporter(
                endpoint=settings.traces_url, headers=dict(settings.headers), timeout=_EXPORT_TIMEOUT
            )
            processor = BatchSpanProcessor(exporter, export_timeout_millis=_EXPORT_TIMEOUT * 1000)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("relaygate", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def add_processor(self, processor: SpanProcessor) -> None:
        """Another destination for the spans (tests hand in the SDK's in-memory exporter)."""
        self.provider.add_span_processor(processor)

    async def close(self) -> None:
        """Flush what is queued and stop the export thread (blocking, so off the event loop)."""
        await asyncio.to_thread(self.provider.shutdown)

    # -------------------------------------------------------------- per request

    def begin(self, call: Call, request: web.Request) -> None:
        """The request's span, child of the client's `traceparent` when it sent one."""
        parent = self.propagator.extract(call.headers) if "traceparent" in call.headers else None
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        span = self.tracer.start_span(
            f"{call.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": call.method,
                "http.route": route,
                "relaygate.request_id": call.request_id,
            },
        )
        call.trace = CallTrace(span, set_span_in_context(span), route)

    def wrap(self, send: Send) -> Send:
        """`send` with a CLIENT span per attempt, its context sent upstream as `traceparent`."""

        async def traced(call: Call, target: Target) -> Reply:
            trace: CallTrace | None = call.trace
            if trace is None:
                return await send(call, target)
            self._end_attempts(call, trace, final=False)
            index = len(call.attempts) - 1
            attempt = call.attempts[index] if index >= 0 else None
            operation = OPERATIONS.get(call.endpoint, call.endpoint)
            span = self.tracer.start_span(
                f"{operation} {target.model}",
                context=trace.context,
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": operation,
                    "gen_ai.request.model": target.model,
                    "gen_ai.provider.name": target.provider_name,
                    "relaygate.provider.type": target.provider.type,
                    "relaygate.attempt": index + 1,
                    "relaygate.retry": attempt.retry if attempt is not None else 0,
                },
            )
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier, context=set_span_in_context(span))
            target.headers.update(carrier)
            try:
                reply = await send(call, target)
            except BaseException as exc:
                if isinstance(exc, GatewayError):
                    _failed(span, exc.error_type, exc.status)
                elif isinstance(exc, asyncio.CancelledError):
                    _failed(span, CLIENT_DISCONNECTED, 0)
                else:
                    _failed(span, "gateway_internal", 0)
                span.end()
                raise
            trace.open.append((span, index))
            return reply

        return traced

    def finish(self, call: Call) -> None:
        """End the attempt spans still open and the request's span (after the response ended)."""
        trace: CallTrace | None = call.trace
        if trace is None:
            return
        call.trace = None
        self._end_attempts(call, trace, final=True)
        span = trace.span
        operation = OPERATIONS.get(call.endpoint) if call.method == "POST" else None
        if operation is not None and call.model:
            span.update_name(f"{operation} {call.model}")
        attrs: dict[str, Any] = {"http.response.status_code": call.status, "relaygate.attempts": len(call.attempts)}
        if operation is not None:
            attrs["gen_ai.operation.name"] = operation
        if call.model:
            attrs["gen_ai.request.model"] = call.model
        target = call.target
        if target is not None:
            attrs["gen_ai.provider.name"] = target.provider_name
            if call.error_type is None:
                attrs["gen_ai.response.model"] = target.model
            if target.route is not None:
                attrs["relaygate.route"] = target.route.model
        if call.client is not None:
            attrs["relaygate.client"] = call.client.name
        if call.fallbacks:
            attrs["relaygate.fallbacks"] = len(call.fallbacks)
        _usage(attrs, call)
        if call.cost_usd:
            attrs["relaygate.cost_usd"] = call.cost_usd
        span.set_attributes(attrs)
        if call.error_type is not None:
            span.set_attribute("error.type", call.error_type)
            if call.status >= 500:
                span.set_status(Status(StatusCode.ERROR, call.error_type))
        span.end()

    def _end_attempts(self, call: Call, trace: CallTrace, *, final: bool) -> None:
        """End attempt spans whose outcome is known now: failed ones, and at the end the last."""
        attempts = call.attempts
        last = len(attempts) - 1
        keep: list[tuple[Span, int]] = []
        for span, index in trace.open:
            attempt = attempts[index] if 0 <= index <= last else None
            if attempt is not None and attempt.error_type is not None:
                _failed(span, attempt.error_type, attempt.status)
            elif not final:
                keep.append((span, index))
                continue
            else:
                status = attempt.status if attempt is not None and attempt.status else call.status
                span.set_attribute("http.response.status_code", status)
                if index == last and call.error_type is not None:
                    _failed(span, call.error_type, 0)
                elif index == last:
                    attrs: dict[str, Any] = {"gen_ai.response.model": call.target.model if call.target else ""}
                    _usage(attrs, call)
                    span.set_attributes(attrs)
            span.end()
        trace.open = keep


def _failed(span: Span, error_type: str, status: int) -> None:
    if status:
        span.set_attribute("http.response.status_code", status)
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


def _usage(attrs: dict[str, Any], call: Call) -> None:
    usage = call.usage
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
