"""Bearer tokens that expire: shared by every request of one provider.

Token sources block (a subprocess, a file, google-auth's HTTP refresh), so a fetch runs
in a worker thread. It is single-flight: however many requests find the token stale at
once, one fetch runs and the others await its result. A token is fetched again `margin`
seconds before it expires, and on demand after the upstream refused it (`refresh`).
After a failed fetch, requests use the token there is while it is still valid, or fail at
once, for `backoff` seconds, so a route's fallbacks stay quick.

Subclasses implement `_fetch`; token values never appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ..errors import UpstreamUnavailable

log = logging.getLogger("relaygate.tokens")


class TokenFetchError(Exception):
    """Why a token could not be fetched; the message must never contain a token."""


@dataclass(slots=True, frozen=True)
class Token:
    value: str
    expires_at: float | None  # wall-clock seconds; None = unknown (used until refused)

    def usable(self) -> bool:
        """Not expired yet, though perhaps inside the refresh margin."""
        return self.expires_at is None or time.time() < self.expires_at


class RefreshingToken:
    #: What the token is, for log lines and errors ("an Entra ID token").
    what = "a token"

    def __init__(self, *, provider: str, margin: float, static: Token | None = None, backoff: float = 10.0) -> None:
        self.provider = provider
        self.margin = margin
        self.backoff = backoff
        self.static = static is not None  # a fixed token is never fetched
        self._current: Token | None = static
        self._generation = 0
        self._lock = asyncio.Lock()
        self._failed_until = 0.0
        #: How many fetches ran (tests and metrics; never the tokens themselves).
        self.fetches = 0

    def _fetch(self) -> Token:
        """Get a new token. Blocking; runs in a worker thread; raises `TokenFetchError`."""
        raise NotImplementedError

    def _fresh(self, token: Token | None) -> bool:
        if token is None:
            return False
        if self.static or token.expires_at is None:
            return True
        return time.time() < token.expires_at - self.margin

    async def token(self) -> str:
        current = self._current
        if current is not None and self._fresh(current):
            return current.value
        return await self._renew(self._generation, force=False)

    async def refresh(self) -> bool:
        """Fetch again after the upstream refused the token; True if there is a new one to retry with.

        Raises like `token()` when there is no usable token at all.
        """
        if self.static:
            return False
        before = self._current.value if self._current is not None else None
        return await self._renew(self._generation, force=True) != before

    async def _renew(self, seen: int, *, force: bool) -> str:
        async with self._lock:
            current = self._current
            if current is not None and self._generation != seen:
                return current.value  # another request refreshed while this one waited
            if not force and current is not None and self._fresh(current):
                return current.value
            if time.monotonic() < self._failed_until:  # the last fetch failed moments ago
                if current is not None and current.usable():
                    return current.value
                raise self._unavailable()
            try:
                self.fetches += 1
                token = await asyncio.to_thread(self._fetch)
            except TokenFetchError as exc:
                self._failed_until = time.monotonic() + self.backoff
                if current is not None and current.usable():
                    log.warning(
                        "provider %s: refreshing %s failed (%s); using the current one", self.provider, self.what, exc
                    )
                    return current.value
                log.error("provider %s: cannot get %s: %s", self.provider, self.what, exc)
                raise self._unavailable() from exc
            self._current = token
            self._generation += 1
            return token.value

    def _unavailable(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"provider {self.provider!r} could not obtain {self.what}", code="upstream_auth_unavailable"
        )
