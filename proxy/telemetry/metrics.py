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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from ..config.load import Config
from ..types import Call
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
#: Seconds between two flushes of a worker's numbers to the shared files under --workers.
FLUSH_INTERVAL = 1.0

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
        if self.multiprocess_dir is None:
            self.inflight.set_function(inflight)
            ProcessCollector(registry=reg)
        self._inflight = inflight
        #: Where `relaygate_breaker_open` is read at each flush: provider name -> open (not closed).
        self.breaker_source: Callable[[], Mapping[str, bool]] | None = None
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for scope in LIMIT_SCOPES:
            for kind in LIMIT_KINDS:
                self.rejections.labels(scope, kind)
        #: Every family, for the exposition of families no worker has written to yet.
        self.families = [f for c in (self.token_usage, self.duration, self.ttft, self.requests, self.fallbacks,
                                     self.retries, self.rejections, self.breaker, self.inflight, self.tokens,
                                     self.cost, self.reloads) for f in c.describe()]  # fmt: skip
        # What requests added since the last flush, by label values: plain ints, floats and
        # bucket lists, so a request costs dictionary hits rather than locked counter updates.
        self._requests: dict[tuple[str, ...], int] = {}
        self._genai: dict[tuple[str, str, str], _GenAI] = {}
        self._tokens: dict[tuple[str, str], list[float]] = {}  # [input, output, cached_input, cost]
        self._fallbacks: dict[tuple[str, str], int] = {}
        self._retries: dict[str, int] = {}
        self._rejections: dict[tuple[str, str], int] = {}
        self._glob_models: set[str] = set()

    # -------------------------------------------------------------- configuration

    def configure(self, config: Config) -> None:
        """Expose the per-provider series of a (re)loaded config at 0."""
        for name in config.providers:
            self.retries.labels(name)
            self.breaker.labels(name)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(RELOAD_RESULTS[0] if ok else RELOAD_RESULTS[1]).inc()

    # -------------------------------------------------------------- per request

    def _admit(self, model: str, error_type: str | None) -> str:
        """A name a glob route matched: a label value once it is known not to be made up."""
        if error_type in _UNCONFIRMED or len(self._glob_models) >= MAX_GLOB_MODELS:
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
            model = call.model or ""
            # A literal route's name is the config's; under a glob the client chose it.
            if model != route and model not in self._glob_models:
                model = self._admit(model, call.error_type)
        provider = target.provider_name if target is not None else ""
        client = call.client.name if call.client is not None else (ANONYMOUS if call.config.clients is None else "")
        key = (route, model, provider, client, str(call.status), call.error_type or "")
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1

        attempts = call.attempts
        if len(attempts) > 1:
            previous = attempts[0]
            for attempt in attempts[1:]:
                if attempt.retry:
                    self._retries[attempt.provider] = self._retries.get(attempt.provider, 0) + 1
                elif previous.error_type is not None:
                    fkey = (previous.provider, previous.error_type)
                    self._fallbacks[fkey] = self._fallbacks.get(fkey, 0) + 1
                previous = attempt
        for rkey in call.rejections:
            self._rejections[rkey] = self._rejections.get(rkey, 0) + 1

        usage = call.usage
        operation = OPERATIONS.get(call.endpoint) if call.method == "POST" else None  # not GET of a stored response
        if operation is not None:
            gkey = (operation, model, provider)
            genai = self._genai.get(gkey)
            if genai is None:
                genai = self._genai[gkey] = _GenAI()
            genai.duration.observe(now - call.started)
            if call.stream and call.error_type is None and call.first_byte is not None:
                genai.ttft.observe(call.first_byte - call.started)
            if usage is not None:
                genai.input.observe(usage.prompt_tokens)
                genai.output.observe(usage.completion_tokens)
        if usage is not None or call.cost_usd:
            tkey = (client, model)
            tokens = self._tokens.get(tkey)
            if tokens is None:
                tokens = self._tokens[tkey] = [0, 0, 0, 0.0]
            if usage is not None:
                cached = usage.cached_tokens  # a part of prompt_tokens
                tokens[0] += usage.prompt_tokens - cached
                tokens[1] += usage.completion_tokens
                tokens[2] += cached
            if call.cost_usd:
                tokens[3] += call.cost_usd

    def flush(self) -> None:
        """Move what requests added into prometheus-client's series (on the event loop's thread).

        Before each exposition, and under --workers every `FLUSH_INTERVAL`, so that the
        worker that answers a scrape reads the others' numbers from their files.
        """
        requests, self._requests = self._requests, {}
        for key, count in requests.items():
            self.requests.labels(*key).inc(count)
        genai, self._genai = self._genai, {}
        for gkey, g in genai.items():
            g.duration.flush_into(self.duration.labels(*gkey))
            g.ttft.flush_into(self.ttft.labels(*gkey))
            g.input.flush_into(self.token_usage.labels(*gkey, "input"))
            g.output.flush_into(self.token_usage.labels(*gkey, "output"))
        tokens, self._tokens = self._tokens, {}
        for (client, model), (tin, tout, cached, cost) in tokens.items():
            self.tokens.labels(client, model, "input").inc(tin)
            self.tokens.labels(client, model, "output").inc(tout)
            if cached:
                self.tokens.labels(client, model, "cached_input").inc(cached)
            if cost:
                self.cost.labels(client, model).inc(cost)
        fallbacks, self._fallbacks = self._fallbacks, {}
        for fkey, count in fallbacks.items():
            self.fallbacks.labels(*fkey).inc(count)
        retries, self._retries = self._retries, {}
        for provider, count in retries.items():
            self.retries.labels(provider).inc(count)
        rejections, self._rejections = self._rejections, {}
        for rkey, count in rejections.items():
            self.rejections.labels(*rkey).inc(count)
        if self.multiprocess_dir is not None:
            self.inflight.set(self._inflight())
        if self.breaker_source is not None:
            for provider, is_open in self.breaker_source().items():
                self.breaker.labels(provider).set(1 if is_open else 0)

    # -------------------------------------------------------------- exposition

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when asked for) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess_dir is None:
            return encoder(self.registry), content_type
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_AllWorkers(self.multiprocess_dir, self.families))
        return encoder(registry), content_type


class _Buckets:
    """One histogram series' observations since the last flush: counts per bucket, and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket i holds bounds[i-1] < value <= bounds[i]
        self.sum += value

    def flush_into(self, child: Any) -> None:
        """Add to a prometheus-client histogram child, as `observe` would have one by one."""
        if not any(self.counts):
            return
        buckets = child._buckets  # prometheus-client's per-bucket values, +Inf last, as counts here
        for i, count in enumerate(self.counts):
            if count:
                buckets[i].inc(count)
        child._sum.inc(self.sum)


class _GenAI:
    """The GenAI histograms of one (operation, model, provider)."""

    __slots__ = ("duration", "input", "output", "ttft")

    def __init__(self) -> None:
        self.duration = _Buckets(DURATION_BUCKETS)
        self.ttft = _Buckets(TTFT_BUCKETS)
        self.input = _Buckets(TOKEN_BUCKETS)
        self.output = _Buckets(TOKEN_BUCKETS)


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
