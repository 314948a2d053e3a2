"""OpenTelemetry traces: GenAI attributes, a child span per attempt, traceparent in and out, OTLP/HTTP export."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator

import openai
import pytest
from aiohttp import web
from core_helpers import CLIENT_KEY, config_yaml, until
from fakes.openai_upstream import Behaviour, FakeOpenAI, free_port
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.errors import ConfigError
from proxy.testing import FakeServer, Gateway

CHAT = [{"role": "user", "content": "trace these words"}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Collector:
    """A local OTLP/HTTP receiver: POST /v1/traces with protobuf, as a collector takes it."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.received = threading.Event()

    def app(self) -> web.Application:
        async def traces(request: web.Request) -> web.Response:
            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.read())
            self.requests.append(message)
            self.headers.append(dict(request.headers))
            self.received.set()
            body = ExportTraceServiceResponse().SerializeToString()
            return web.Response(body=body, content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        return app

    def span_names(self) -> list[str]:
        return [s.name for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    receiver = Collector()
    with FakeServer(receiver.app) as server:
        yield receiver, server.url


def _config(upstream: FakeOpenAI, endpoint: str, extra: str = "") -> str:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = f"  down: {{type: openai, base_url: \"{dead}\", api_key: x, connect_timeout: 2}}\n"
    routes = (
        "  - {model: fb-model, to: [{provider: down, model: gpt-4o-mini}, {provider: up, model: gpt-4o-mini}]}\n"
        "  - {model: \"*\", to: up}\n"
    )
    telemetry = (f"telemetry:\n  otlp: {{endpoint: \"{endpoint}\", service_name: relaygate-test,"
                 f" headers: {{x-collector-key: k1}}{extra}}}\n")
    return telemetry + config_yaml(upstream.url, extra_providers=providers, routes=routes)


@pytest.fixture
def traced(upstream: FakeOpenAI, collector: tuple[Collector, str],
           make_gateway: Callable[..., Gateway]) -> tuple[Gateway, InMemorySpanExporter]:
    gw = make_gateway(_config(upstream, collector[1]))
    exporter = InMemorySpanExporter()
    tracing = gw.runtime.tracing
    assert tracing is not None
    tracing.add_processor(SimpleSpanProcessor(exporter))
    return gw, exporter


def _finished(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The spans once `count` have ended (the request span ends after the response has)."""
    assert until(lambda: len(exporter.get_finished_spans()) >= count, timeout=5), exporter.get_finished_spans()
    return list(exporter.get_finished_spans())


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def test_a_fallback_is_one_request_span_with_a_child_per_attempt(
    traced: tuple[Gateway, InMemorySpanExporter], upstream: FakeOpenAI
) -> None:
    gw, exporter = traced
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        resp = client.chat.completions.create(model="fb-model", messages=CHAT,
                                              extra_headers={"traceparent": TRACEPARENT})
    spans = _finished(exporter, 3)
    assert len(spans) == 3
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert len(attempts) == 2
    # The incoming traceparent is honoured: same trace, the client's span is the parent.
    assert _hex(server.context.trace_id, 32) == TRACE_ID
    assert server.parent is not None and _hex(server.parent.span_id, 16) == PARENT_ID
    for attempt in attempts:
        assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
        assert attempt.context.trace_id == server.context.trace_id
    assert server.name == "chat fb-model"
    assert server.attributes is not None and attempts[0].attributes is not None
    assert attempts[1].attributes is not None and resp.usage is not None
    assert dict(server.attributes) | {"relaygate.request_id": "x"} == {
        "http.request.method": "POST", "http.route": "/v1/chat/completions", "relaygate.request_id": "x",
        "http.response.status_code": 200, "relaygate.attempts": 2, "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "fb-model", "gen_ai.provider.name": "up", "gen_ai.response.model": "gpt-4o-mini",
        "relaygate.route": "fb-model", "relaygate.client": "team-a", "relaygate.fallbacks": 1,
        "gen_ai.usage.input_tokens": resp.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": resp.usage.completion_tokens,
    }  # fmt: skip
    failed, answered = attempts
    assert failed.name == "chat gpt-4o-mini" and answered.name == "chat gpt-4o-mini"
    assert failed.attributes["gen_ai.provider.name"] == "down" and failed.attributes["relaygate.attempt"] == 1
    assert failed.attributes["error.type"] == "upstream_unavailable"
    assert failed.status.status_code == StatusCode.ERROR
    assert answered.attributes["gen_ai.provider.name"] == "up" and answered.attributes["relaygate.attempt"] == 2
    assert answered.attributes["relaygate.retry"] == 0 and answered.attributes["relaygate.provider.type"] == "openai"
    assert answered.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert answered.attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert answered.attributes["gen_ai.usage.output_tokens"] == resp.usage.completion_tokens
    assert "error.type" not in answered.attributes and answered.status.status_code != StatusCode.ERROR
    # ... and propagated upstream: the upstream's parent is the attempt that reached it.
    sent = upstream.last("/v1/chat/completions").headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{_hex(answered.context.span_id, 16)}-01"


def test_a_stream_span_ends_with_the_stream(traced: tuple[Gateway, InMemorySpanExporter], upstream: FakeOpenAI) -> None:
    gw, exporter = traced
    upstream.on("slowish", Behaviour(chunk_delay=0.05, words=4))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="slowish", messages=CHAT, stream=True,
                                                     stream_options={"include_usage": True}))
    spans = _finished(exporter, 2)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    attempt = next(s for s in spans if s.kind == SpanKind.CLIENT)
    assert attempt.end_time is not None and attempt.start_time is not None
    assert (attempt.end_time - attempt.start_time) / 1e9 >= 0.2, "the attempt span covers the whole stream"
    usage = chunks[-1].usage
    assert usage is not None and attempt.attributes is not None and server.attributes is not None
    assert attempt.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    # No traceparent came in: a new trace, still sent upstream.
    assert server.parent is None
    assert TRACE_ID not in upstream.last("/v1/chat/completions").headers["traceparent"]


def test_failures_carry_the_error_type(traced: tuple[Gateway, InMemorySpanExporter], upstream: FakeOpenAI) -> None:
    gw, exporter = traced
    upstream.on("broken", Behaviour(status=500))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client, \
            pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=CHAT)
    spans = _finished(exporter, 2)
    for span in spans:
        assert span.attributes is not None and span.attributes["error.type"] == "upstream_error"
        assert span.attributes["http.response.status_code"] == 500
        assert span.status.status_code == StatusCode.ERROR


def test_spans_are_exported_over_otlp_http(traced: tuple[Gateway, InMemorySpanExporter],
                                           collector: tuple[Collector, str]) -> None:
    gw, _ = traced
    receiver, _ = collector
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    tracing = gw.runtime.tracing
    assert tracing is not None
    assert until(lambda: tracing.provider.force_flush(5000) and receiver.received.is_set(), timeout=10)
    assert set(receiver.span_names()) >= {"chat gpt-4o"}
    resource = receiver.requests[0].resource_spans[0].resource
    attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert attrs["service.name"] == "relaygate-test"
    assert receiver.headers[0]["x-collector-key"] == "k1"
    assert receiver.headers[0]["Content-Type"] == "application/x-protobuf"


def test_reload_keeps_an_unchanged_tracer_and_replaces_a_changed_one(
    upstream: FakeOpenAI, collector: tuple[Collector, str], make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(_config(upstream, collector[1]))
    first = gw.runtime.tracing
    assert gw.reload(_config(upstream, collector[1]))
    assert gw.runtime.tracing is first
    assert gw.reload(_config(upstream, collector[1], extra=", sample_ratio: 0.5"))
    assert gw.runtime.tracing is not first and gw.runtime.tracing is not None
    assert gw.reload(config_yaml(upstream.url))
    assert gw.runtime.tracing is None


def test_otlp_without_the_extra_is_a_config_error(
    upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.telemetry import settings

    monkeypatch.setattr(settings, "otel_installed", lambda: False)
    needs = r"telemetry\.otlp: traces need the OpenTelemetry packages: .*relaygate\[otel\]"
    with pytest.raises(ConfigError, match=needs):
        make_gateway(_config(upstream, "http://127.0.0.1:4318"))


def test_without_otlp_opentelemetry_is_never_imported() -> None:
    script = textwrap.dedent("""
        import sys, urllib.request, orjson
        from proxy.testing import Gateway
        config = "providers:\\n  demo: {type: demo}\\nroutes:\\n  - {model: '*', to: demo}\\n"
        with Gateway(config) as gw:
            body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
            req = urllib.request.Request(gw.base_url + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json", "traceparent": "00-%s-%s-01"})
            urllib.request.urlopen(req).read()
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """) % (TRACE_ID, PARENT_ID)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_retries_and_an_open_breaker_show_in_spans_and_metrics(
    upstream: FakeOpenAI, collector: tuple[Collector, str], make_gateway: Callable[..., Gateway]
) -> None:
    """Two tries on `flaky` (a retry), its breaker opens, `up` answers: three sibling spans, exact counters."""
    from telemetry_helpers import scrape

    upstream.on("sick-model", Behaviour(status=502))
    providers = (
        f"  flaky: {{type: openai, base_url: \"{upstream.url}/v1\", api_key: \"${{UPSTREAM_KEY}}\","
        " retries: {attempts: 2, backoff: 0.01, max_backoff: 1}, breaker: {failures: 2, cooldown: 60}}\n"
    )
    routes = "  - {model: resilient, to: [{provider: flaky, model: sick-model}, {provider: up, model: gpt-4o}]}\n"
    telemetry = f"telemetry:\n  otlp: {{endpoint: \"{collector[1]}\"}}\n"
    gw = make_gateway(telemetry + config_yaml(upstream.url, extra_providers=providers, routes=routes))
    exporter = InMemorySpanExporter()
    assert gw.runtime.tracing is not None
    gw.runtime.tracing.add_processor(SimpleSpanProcessor(exporter))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        client.chat.completions.create(model="resilient", messages=CHAT)
    spans = _finished(exporter, 4)
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    described = [(s.attributes["gen_ai.provider.name"], s.attributes["relaygate.retry"], s.attributes.get("error.type"))
                 for s in attempts if s.attributes is not None]
    assert described == [("flaky", 0, "upstream_error"), ("flaky", 1, "upstream_error"), ("up", 0, None)]
    assert until(lambda: scrape(gw.url).total("relaygate_requests_total") == 1)
    got = scrape(gw.url)
    assert got.total("relaygate_retries_total", provider="flaky") == 1
    assert got.total("relaygate_retries_total", provider="up") == 0
    assert got.total("relaygate_fallbacks_total", provider="flaky", reason="upstream_error") == 1
    assert got.total("relaygate_fallbacks_total") == 1
    assert got.total("relaygate_breaker_open", provider="flaky") == 1  # open after two failures in a row
    assert got.total("relaygate_breaker_open", provider="up") == 0
