"""Telemetry (DESIGN §4): Prometheus metrics and OpenTelemetry traces.

`Telemetry` is one per app. It hands each loaded config (`Runtime`) what its
`telemetry:` block asks for: `runtime.metrics` (the app's one registry, made when a
config first turns metrics on) and `runtime.tracing` (a tracer provider per
`telemetry.otlp` setting). What a config turns off is None, and the journey then skips
it with one attribute test: prometheus-client is imported only when metrics are on,
OpenTelemetry only when `telemetry.otlp` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..server.runtime import Runtime
    from .metrics import Metrics

log = logging.getLogger("relaygate")


class Telemetry:
    def __init__(self, inflight: Callable[[], int], current: Callable[[], Runtime | None]) -> None:
        self._inflight = inflight
        self._current = current
        self.metrics: Metrics | None = None
        self._flusher: asyncio.TimerHandle | None = None

    def attach(self, runtime: Runtime, previous: Runtime | None) -> None:
        """Give `runtime` its metrics and tracing, before it starts; `previous` is the one serving."""
        settings = runtime.config.telemetry
        if settings.metrics:
            if self.metrics is None:
                from .metrics import Metrics

                self.metrics = Metrics(self._inflight)
                self.metrics.breaker_source = self._breakers
                if self.metrics.multiprocess_dir is not None:
                    self._schedule_flush()
            self.metrics.configure(runtime.config)
            runtime.metrics = self.metrics
        if settings.otlp is not None:
            kept = previous.tracing if previous is not None else None
            if kept is not None and kept.settings == settings.otlp:
                runtime.tracing = kept
            else:
                from .tracing import Tracing

                runtime.tracing = Tracing(settings.otlp)
                log.info("traces go to %s as service %s", settings.otlp.traces_url, settings.otlp.service_name)

    async def release(self, runtime: Runtime, current: Runtime | None) -> None:
        """`runtime` is done (retired, failed to start, or closed): close a tracer no one else uses."""
        tracing = runtime.tracing
        if tracing is not None and (current is None or current.tracing is not tracing):
            runtime.tracing = None
            await tracing.close()

    def _breakers(self) -> dict[str, bool]:
        """Each provider's breaker in the config serving now: open (or half-open) or not."""
        runtime = self._current()
        if runtime is None:
            return {}
        return {name: runtime.breaker_open(name) for name in runtime.config.providers}

    def reloaded(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.reloaded(ok)

    def _schedule_flush(self) -> None:
        """Under --workers: publish this worker's numbers every FLUSH_INTERVAL (another may answer a scrape)."""
        from .metrics import FLUSH_INTERVAL

        def tick() -> None:
            if self.metrics is not None:
                self.metrics.flush()
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, tick)

        self._flusher = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, tick)

    def close(self) -> None:
        """Publish what is left (the app stops)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self.metrics is not None:
            self.metrics.flush()
