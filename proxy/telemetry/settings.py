"""The `telemetry:` block (DESIGN §4 "Telemetry"), read without importing any telemetry library."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..config.options import Options

#: What `pip install` line makes `telemetry.otlp` work.
OTEL_EXTRA = "pip install 'relaygate[otel]'"


@dataclass(slots=True, frozen=True)
class OtlpSettings:
    """`telemetry.otlp`: where traces go (OTLP over HTTP, protobuf)."""

    endpoint: str  # the OTLP base URL; spans are POSTed to {endpoint}/v1/traces
    service_name: str = "relaygate"
    headers: tuple[tuple[str, str], ...] = ()  # e.g. an API key of the collector
    sample_ratio: float = 1.0  # of new traces; an incoming traceparent's decision is kept

    @property
    def traces_url(self) -> str:
        """OTLP/HTTP's signal path under the base URL (a URL that already ends in it is kept)."""
        return self.endpoint if self.endpoint.endswith("/v1/traces") else f"{self.endpoint}/v1/traces"


@dataclass(slots=True, frozen=True)
class TelemetrySettings:
    metrics: bool = True  # GET /metrics
    otlp: OtlpSettings | None = None  # None: no traces, and OpenTelemetry is never imported


def otel_installed() -> bool:
    """Whether the `otel` extra is installed (looked up, not imported)."""
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None and (
            importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
        )
    except ModuleNotFoundError:
        return False


def parse_telemetry(opts: Options) -> TelemetrySettings:
    metrics = opts.bool("metrics", True)
    otlp = None
    if opts.raw("otlp") is not None:
        block = opts.block("otlp")
        endpoint = block.url("endpoint")
        service_name = block.str("service_name", "relaygate")
        headers = block.str_map("headers", {})
        ratio = block.number("sample_ratio", 1.0)
        if ratio > 1:
            raise block.error("sample_ratio", f"expected a number from 0 to 1, got {ratio!r}")
        block.check_unused()
        if not otel_installed():
            raise opts.error("otlp", f"traces need the OpenTelemetry packages: {OTEL_EXTRA}")
        otlp = OtlpSettings(endpoint, service_name, tuple(sorted(headers.items())), float(ratio))
    opts.check_unused()
    return TelemetrySettings(metrics, otlp)
