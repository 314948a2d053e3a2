"""Per-process health of each provider: circuit breaker, requests in flight, target order.

Breakers and in-flight counts are per process (each worker and replica learns on its own
that an upstream is sick; DESIGN §4 allows it). `Health` is carried over a reload, so a
SIGHUP neither closes an open breaker nor forgets the requests in flight.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from ..limits.config import BreakerSettings, Retries

if TYPE_CHECKING:
    from ..config.load import Config, Route
    from ..types import Target

log = logging.getLogger("relaygate")
BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    """Open after `failures` consecutive failures; skip for `cooldown` s; then one probe.

    A probe that succeeds closes the breaker; one that fails opens it for another cooldown.
    """

    __slots__ = ("failures", "name", "opened_at", "probing", "settings")

    def __init__(self, name: str, settings: BreakerSettings) -> None:
        self.name = name
        self.settings = settings
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at < self.settings.cooldown:
            return "open"
        return "half_open"

    def available(self) -> bool:
        """Whether a request may be sent now (no side effect)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.probing)

    def acquire(self) -> bool:
        """Claim the right to send; in half-open state only one request (the probe) gets it."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        if self.opened_at is not None:
            log.warning("provider %s: circuit closed (the probe succeeded)", self.name)
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failed(self) -> None:
        if self.probing:
            self.probing = False
            self.opened_at = time.monotonic()
            log.warning("provider %s: circuit open again for %g s (the probe failed)", self.name,
                        self.settings.cooldown)  # fmt: skip
            return
        self.failures += 1
        if self.opened_at is None and self.failures >= self.settings.failures:
            self.opened_at = time.monotonic()
            log.warning("provider %s: circuit open for %g s after %d failures in a row", self.name,
                        self.settings.cooldown, self.failures)  # fmt: skip

    def abandon(self) -> None:
        """The probe ended without an answer (client gone): the next request probes instead."""
        self.probing = False


class ProviderHealth:
    __slots__ = ("breaker", "inflight")

    def __init__(self, breaker: Breaker | None) -> None:
        self.breaker = breaker
        self.inflight = 0  # requests sent to this provider and not yet finished (streams included)


class Health:
    """Every provider's `ProviderHealth` and the weighted rotation of each route."""

    def __init__(self, config: Config, previous: Health | None = None) -> None:
        self.providers: dict[str, ProviderHealth] = {}
        old = previous.providers if previous is not None else {}
        for name in config.providers:
            policy = config.provider_policies.get(name)
            settings = policy.breaker if policy is not None else None
            kept = old.get(name)
            if kept is not None and (kept.breaker.settings if kept.breaker else None) == settings:
                self.providers[name] = kept
                continue
            health = ProviderHealth(Breaker(name, settings) if settings is not None else None)
            if kept is not None:
                health.inflight = kept.inflight
            self.providers[name] = health
        self._rotation: dict[tuple[str, int], list[float]] = {}

    def get(self, name: str) -> ProviderHealth:
        health = self.providers.get(name)
        if health is None:  # a target a third-party `route` hook made up
            health = self.providers[name] = ProviderHealth(None)
        return health

    def available(self, name: str) -> bool:
        breaker = self.get(name).breaker
        return breaker is None or breaker.available()

    def breaker_open(self, name: str) -> bool:
        """Whether `name`'s breaker is not closed (open, or half-open awaiting its probe)."""
        health = self.providers.get(name)
        return health is not None and health.breaker is not None and health.breaker.state != "closed"

    def order(self, route: Route | None, candidates: Sequence[Target]) -> list[Target]:
        """The targets in the order to try them: the route's strategy picks the first."""
        strategy = route.strategy if route is not None else "fallback"
        if strategy == "fallback" or len(candidates) < 2:
            return list(candidates)
        if strategy == "least_busy":
            busy = [self.get(t.provider_name).inflight / t.weight for t in candidates]
            first = min(range(len(candidates)), key=busy.__getitem__)
        else:
            first = self._weighted(route, candidates)  # type: ignore[arg-type]
        return [candidates[first], *candidates[:first], *candidates[first + 1 :]]

    def _weighted(self, route: Route, candidates: Sequence[Target]) -> int:
        """Smooth weighted round robin (nginx's): exact shares, evenly spread, no randomness."""
        key = (route.model, route.line)
        current = self._rotation.get(key)
        if current is None or len(current) != len(candidates):
            current = self._rotation[key] = [0.0] * len(candidates)
        total = 0.0
        for i, t in enumerate(candidates):
            current[i] += t.weight
            total += t.weight
        best = max(range(len(candidates)), key=current.__getitem__)
        current[best] -= total
        return best


# ---------------------------------------------------------------- retries


def retry_delay(retries: Retries, retry: int, headers: Mapping[str, str]) -> float | None:
    """Seconds to wait before retry number `retry` (1 = the first retry); None: give up on the target.

    The upstream's Retry-After is honoured up to `max_backoff` (beyond it, another target is
    better than waiting); otherwise exponential backoff with equal jitter, capped.
    """
    wait = retry_after(headers)
    if wait is not None:
        return wait if wait <= retries.max_backoff else None
    base = min(retries.max_backoff, retries.backoff * 2 ** (retry - 1))
    return random.uniform(base / 2, base)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` or `retry-after` (seconds or an HTTP date), in seconds."""
    for name, value in headers.items():
        lower = name.lower()
        try:
            if lower == "retry-after-ms":
                return max(float(value) / 1000, 0.0)
            if lower == "retry-after":
                try:
                    return max(float(value), 0.0)
                except ValueError:
                    when = email.utils.parsedate_to_datetime(value)
                    return max(when.timestamp() - time.time(), 0.0)
        except (ValueError, TypeError):
            return None
    return None
