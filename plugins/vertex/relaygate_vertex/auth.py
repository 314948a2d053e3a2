"""Google access tokens for Vertex AI, through google-auth.

Credentials are Application Default Credentials (`google.auth.default()`: the
`GOOGLE_APPLICATION_CREDENTIALS` file, gcloud's user credentials, the GCE/GKE metadata
server, workload identity) or an explicit `credentials_file` (a service-account key or
any other file google-auth loads; its `token_uri` is honoured), with the cloud-platform
scope. They are loaded on first use, not at start-up, so a gateway starts at once even
where finding ADC means probing a metadata server.

google-auth is blocking, so loading and refreshing run in a worker thread. Refreshing is
single-flight: one refresh runs however many requests need a token, and the rest await
its result. A token is refreshed `refresh_margin` seconds before it expires, and once
more when Vertex answers 401. Tokens never appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import google.auth
from google.auth import exceptions as gexc
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from proxy.errors import UpstreamUnavailable

from .transport import UrllibRequest

log = logging.getLogger("relaygate.vertex")

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_MARGIN = 300.0
#: After a failure with no usable token, requests fail at once for this long instead of
#: each waiting for another attempt (finding no ADC takes seconds), so fallbacks are quick.
FAILURE_BACKOFF = 10.0


@dataclass(slots=True, frozen=True)
class AccessToken:
    value: str
    expires_at: float | None  # wall-clock seconds; None when google-auth does not say


def _expiry(creds: Any) -> float | None:
    expiry = getattr(creds, "expiry", None)
    if not isinstance(expiry, dt.datetime):
        return None
    if expiry.tzinfo is None:  # google-auth keeps naive UTC datetimes
        expiry = expiry.replace(tzinfo=dt.timezone.utc)
    return expiry.timestamp()


def load_credentials_file(path: str, scopes: Sequence[str]) -> Any:
    """Service-account keys and authorized-user files, each by its own loader.

    Other kinds (workload identity federation, impersonation) can run commands or fetch
    URLs named in the file; google-auth loads those through ADC
    (`GOOGLE_APPLICATION_CREDENTIALS`), where the operator has chosen the file.
    """
    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        return service_account.Credentials.from_service_account_info(info, scopes=scopes)
    if kind == "authorized_user":
        return user_credentials.Credentials.from_authorized_user_info(info, scopes=scopes)
    raise gexc.DefaultCredentialsError(
        f"credentials_file holds {kind!r} credentials; expected service_account or authorized_user "
        "(point GOOGLE_APPLICATION_CREDENTIALS at other kinds and leave credentials_file unset)"
    )


def _usable(token: AccessToken | None) -> bool:
    """Not expired yet (though perhaps inside the refresh margin)."""
    return token is not None and (token.expires_at is None or time.time() < token.expires_at)


class GoogleToken:
    """One provider's Google credentials and its current access token."""

    def __init__(
        self,
        *,
        provider: str,
        credentials_file: str | None = None,
        scopes: Sequence[str] = (CLOUD_PLATFORM,),
        margin: float = DEFAULT_MARGIN,
        timeout: float = 30.0,
    ) -> None:
        self.provider = provider
        self.credentials_file = credentials_file
        self.scopes = list(scopes)
        self.margin = margin
        self.transport = UrllibRequest(timeout)
        self._credentials: Any = None  # touched only inside the single-flight refresh
        self._current: AccessToken | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._failed_until = 0.0
        #: How many refreshes ran (tests and metrics; never the tokens themselves).
        self.refreshes = 0

    def _fresh(self, token: AccessToken | None) -> bool:
        if token is None:
            return False
        return token.expires_at is None or time.time() < token.expires_at - self.margin

    async def token(self) -> str:
        current = self._current
        if current is not None and self._fresh(current):
            return current.value
        return await self._renew(self._generation, force=False)

    async def refresh(self) -> bool:
        """Refresh after Vertex refused the token; True if there is a new one to retry with.

        Raises like `token()` when there is no usable token at all.
        """
        before = self._current.value if self._current is not None else None
        return await self._renew(self._generation, force=True) != before

    async def _renew(self, seen: int, *, force: bool) -> str:
        async with self._lock:
            current = self._current
            if current is not None and self._generation != seen:
                return current.value  # refreshed while this request waited
            if not force and current is not None and self._fresh(current):
                return current.value
            if time.monotonic() < self._failed_until:  # the last attempt failed moments ago
                if current is not None and _usable(current):
                    return current.value
                raise self._unavailable()
            try:
                token = await asyncio.to_thread(self._refresh_blocking)
            except (gexc.GoogleAuthError, ValueError, OSError) as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:300]}"
                self._failed_until = time.monotonic() + FAILURE_BACKOFF
                if current is not None and _usable(current):
                    log.warning(
                        "provider %s: token refresh failed (%s); using the current token", self.provider, reason
                    )
                    return current.value
                log.error("provider %s: cannot get a Google access token: %s", self.provider, reason)
                raise self._unavailable() from exc
            self._current = token
            self._generation += 1
            return token.value

    def _unavailable(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"provider {self.provider!r} could not obtain a Google access token", code="upstream_auth_unavailable"
        )

    # -------------------------------------------------------------- blocking (worker thread)

    def _load(self) -> Any:
        if self.credentials_file is None:
            creds, _ = google.auth.default(scopes=self.scopes, request=self.transport)
            return creds
        return load_credentials_file(self.credentials_file, self.scopes)

    def _refresh_blocking(self) -> AccessToken:
        if self._credentials is None:
            self._credentials = self._load()
        self.refreshes += 1
        self._credentials.refresh(self.transport)
        value = self._credentials.token
        if not isinstance(value, str) or not value:
            raise gexc.RefreshError("the credentials produced no access token")
        return AccessToken(value, _expiry(self._credentials))
