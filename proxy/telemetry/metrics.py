"""Prometheus metrics (DESIGN §4 "Telemetry"), with prometheus-client.

Imported only when a config has `telemetry.metrics` on. Each finished request is counted
once, after the chain's log stage (`Metrics.record`), never per streamed chunk; the
labelled children are looked up once per label combination and kept in plain dicts, so
a request costs a few dictionary hits and counter increments.

Cardinality is bounded by construction: label values are config names (route patterns,
provider and key names) and closed sets (status, `error_type`, token type). The one name
a client chooses, the model, is a label value only when a literal route names it, or,
under a glob route, once the request got past the upstream's "unknown model" check, and
then only for the first `MAX_GLOB_MODELS` names a process sees.

Under `relaygate serve --workers N` the supervisor sets `PROMETHEUS_MULTIPROC_DIR`
before forking: each worker writes its numbers to files there and `/metrics`, whichever
worker answers it, reports the sum.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from ..config.load import Config
from ..types import Call, Usage
from .names import ANONYMOUS, MULTIPROC_ENV, OPERATIONS, UNMATCHED

RELOAD_RESULTS = ("success", "failure")
LIMIT_SCOPES = ("key", "route", "provider")
LIMIT_KINDS = ("requests", "tokens", "concurrency", "budget")
#: Client-chosen model names admitted as label values under glob routes, per process.
MAX_GLOB_MODELS = 500
#: Failures that say nothing about whether a model name is real: under a glob route the
#: name is then not a label value (a client could otherwise mint series at will).
_UNCONFIRMED = frozenset(
    {
        "client_bad_request", "client_auth", "client_permission", "client_not_found", "client_too_large",
        "upstream_bad_request", "upstream_not_found",
    }
)  # fmt: skip

# The OpenTelemetry GenAI semantic conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

GENAI = ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_provider_name")


class Metrics:
    """Every family of DESIGN §4, registered in a registry of its own (one per app)."""

    def __init__(self, inflight: Callable[[], int]) -> None:
        # `*_created` series would double the exposition for a start time Prometheus already has.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        reg = self.registry = CollectorRegistry(auto_describe=True)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens used per request (GenAI semantic conventions), by token type.",
            [*GENAI, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=reg)  # fmt: skip
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds", "Time from request to the response's last byte, seconds.",
            GENAI, buckets=DURATION_BUCKETS, registry=reg)  # fmt: skip
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time to the first byte of a successful stream, seconds.",
            GENAI, buckets=TTFT_BUCKETS, registry=reg)  # fmt: skip
        self.requests = Counter(
            "relaygate_requests_total", "Requests answered, by route, model, provider, client, status, error_type.",
            ["route", "model", "provider", "client", "status", "error_type"], registry=reg)  # fmt: skip
        self.fallbacks = Counter(
            "relaygate_fallbacks_total", "Targets given up for the next one, by the provider that failed and why.",
            ["provider", "reason"], registry=reg)  # fmt: skip
        self.retries = Counter(
            "relaygate_retries_total", "Retries of a target (attempts after its first).", ["provider"], registry=reg)
        self.rejections = Counter(
            "relaygate_limit_rejections_total", "Requests a limit of the gateway said no to, by scope and kind.",
            ["scope", "kind"], registry=reg)  # fmt: skip
        self.breaker = Gauge(
            "relaygate_breaker_open", "1 while the provider's circuit breaker is open (it is skipped), else 0.",
            ["provider"], registry=reg, multiprocess_mode="livemax")  # fmt: skip
        self.inflight = Gauge(
            "relaygate_inflight_requests", "Requests being served now.", registry=reg, multiprocess_mode="livesum")
        self.tokens = Counter(
            "relaygate_tokens_total", "Tokens by client, model and type (input excludes cached_input).",
            ["client", "model", "type"], registry=reg)  # fmt: skip
        self.cost = Counter(
            "relaygate_cost_usd_total", "Cost in USD from the routes' prices, by client and model.",
            ["client", "model"], registry=reg)  # fmt: skip
        self.reloads = Counter(
            "relaygate_config_reloads_total", "Config reloads (SIGHUP), by result: success or failure.",
            ["result"], registry=reg)  # fmt: skip
        #: Under --workers, each request moves this process's share of the in-flight gauge;
        #: one process reads its own count when scraped.
        self.live_inflight: Gauge | None = self.inflight if self.multiprocess_dir else None
        if self.multiprocess_dir is None:
            self.inflight.set_function(inflight)
            ProcessCollector(registry=reg)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for scope in LIMIT_SCOPES:
            for kind in LIMIT_KINDS:
                self.rejections.labels(scope, kind)
        self._families = [f for c in (self.token_usage, self.duration, self.ttft, self.requests, self.fallbacks,
                                      self.retries, self.rejections, self.breaker, self.inflight, self.tokens,
                                      self.cost, self.reloads) for f in c.describe()]  # fmt: skip
        self._requests: dict[tuple[str, ...], Any] = {}
        self._genai: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}
        self._tokens: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        self._glob_models: set[str] = set()

    # -------------------------------------------------------------- configuration

    def configure(self, config: Config) -> None:
        """Expose the per-provider series of a (re)loaded config at 0."""
        for name in config.providers:
            self.retries.labels(name)
            self.breaker.labels(name)

    def set_breaker(self, provider: str, is_open: bool) -> None:
        """For the breaker: called when a provider's breaker opens or closes."""
        self.breaker.labels(provider).set(1 if is_open else 0)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(RELOAD_RESULTS[0] if ok else RELOAD_RESULTS[1]).inc()

    # -------------------------------------------------------------- per request

    def _model(self, call: Call, glob: bool) -> str:
        model = call.model
        if model is None:
            return ""
        if not glob or model in self._glob_models:
            return model
        if call.error_type in _UNCONFIRMED or len(self._glob_models) >= MAX_GLOB_MODELS:
            return ""
        self._glob_models.add(model)
        return model

    def record(self, call: Call) -> None:
        """Count one finished request (after the log stage; the response has ended)."""
        now = time.perf_counter()
        target = call.target
        rule = target.route if target is not None else (call.targets[0].route if call.targets else None)
        if rule is None:
            route, model = UNMATCHED, ""
        else:
            route = rule.model
            model = self._model(call, rule.is_glob)
        provider = target.provider_name if target is not None else ""
        client = call.client.name if call.client is not None else (ANONYMOUS if call.config.clients is None else "")
        key = (route, model, provider, client, str(call.status), call.error_type or "")
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

        attempts = call.attempts
        if len(attempts) > 1:
            previous = attempts[0]
            for attempt in attempts[1:]:
                if attempt.retry:
                    self.retries.labels(attempt.provider).inc()
                elif previous.error_type is not None:
                    self.fallbacks.labels(previous.provider, previous.error_type).inc()
                previous = attempt
        for scope, kind in call.rejections:
            self.rejections.labels(scope, kind).inc()

        usage = call.usage
        operation = OPERATIONS.get(call.endpoint)
        if operation is not None:
            gkey = (operation, model, provider)
            genai = self._genai.get(gkey)
            if genai is None:
                genai = self._genai[gkey] = (
                    self.duration.labels(*gkey), self.ttft.labels(*gkey),
                    self.token_usage.labels(*gkey, "input"), self.token_usage.labels(*gkey, "output"),
                )  # fmt: skip
            genai[0].observe(now - call.started)
            if call.stream and call.error_type is None and call.first_byte is not None:
                genai[1].observe(call.first_byte - call.started)
            if usage is not None:
                genai[2].observe(usage.prompt_tokens)
                genai[3].observe(usage.completion_tokens)
        if usage is not None or call.cost_usd:
            tkey = (client, model)
            tokens = self._tokens.get(tkey)
            if tokens is None:
                tokens = self._tokens[tkey] = (
                    self.tokens.labels(client, model, "input"), self.tokens.labels(client, model, "output"),
                    self.tokens.labels(client, model, "cached_input"), self.cost.labels(client, model),
                )  # fmt: skip
            if usage is not None:
                cached = _cached(usage)
                tokens[0].inc(usage.prompt_tokens - cached)
                tokens[1].inc(usage.completion_tokens)
                if cached:
                    tokens[2].inc(cached)
            if call.cost_usd:
                tokens[3].inc(call.cost_usd)

    def record_unmatched(self, status: int, error_type: str, open_gateway: bool) -> None:
        """A request no route of the gateway serves (an unknown path)."""
        key = (UNMATCHED, "", "", ANONYMOUS if open_gateway else "", str(status), error_type)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

    # -------------------------------------------------------------- exposition

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when asked for) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess_dir is None:
            return encoder(self.registry), content_type
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_AllWorkers(self.multiprocess_dir, self._families))
        return encoder(registry), content_type


def _cached(usage: Usage) -> int:
    """Cached input tokens, where the usage reports them (a part of `prompt_tokens`)."""
    cached = getattr(usage, "cached_tokens", 0)
    return cached if isinstance(cached, int) and 0 < cached <= usage.prompt_tokens else 0


class _AllWorkers:
    """Every worker's numbers, summed; families no worker has written yet still show (empty)."""

    def __init__(self, path: str, families: Iterable[Metric]) -> None:
        self._collector = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        seen = set()
        for family in self._collector.collect():  # type: ignore[no-untyped-call]
            seen.add(family.name)
            yield family
        for family in self._families:
            if family.name not in seen:
                yield family
