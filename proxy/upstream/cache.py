"""A single-flight TTL cache: model listings (OpenAI-compatible `/models`, Bedrock's catalogue).

However many requests find the value stale at once, one fetch runs and the others await
it. A failed fetch keeps serving the last good value (or `empty`) and is tried again
after `retry_after_failure` seconds rather than a whole TTL, but not on every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("relaygate.upstream")

RETRY_AFTER_FAILURE = 30.0


class TTLCache(Generic[T]):
    """One value, refreshed at most once per `ttl` seconds, one refresh at a time."""

    def __init__(
        self,
        ttl: float,
        empty: T,
        *,
        what: str = "value",
        errors: tuple[type[BaseException], ...] = (Exception,),
        retry_after_failure: float = RETRY_AFTER_FAILURE,
    ) -> None:
        self.ttl = ttl
        self.what = what
        self.errors = errors
        self.retry_after_failure = retry_after_failure
        self._value = empty
        self._at = -1e18
        self._lock = asyncio.Lock()
        #: How many fetches ran (tests, metrics).
        self.fetches = 0

    async def get(self, fetch: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        if loop.time() - self._at < self.ttl:
            return self._value
        async with self._lock:
            if loop.time() - self._at < self.ttl:
                return self._value
            self.fetches += 1
            try:
                value = await fetch()
            except self.errors as exc:
                log.warning("%s failed: %s", self.what, type(exc).__name__)
                # Keep the last good value; try again sooner than a full TTL.
                self._at = loop.time() - self.ttl + min(self.ttl, self.retry_after_failure)
                return self._value
            self._value = value
            self._at = loop.time()
        return value
