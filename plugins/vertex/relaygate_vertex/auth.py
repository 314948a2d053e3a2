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

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

import google.auth
from google.auth import exceptions as gexc
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from proxy.upstream.tokens import RefreshingToken, Token, TokenFetchError
from proxy.upstream.transport import TransportSettings

from .transport import UrllibRequest

log = logging.getLogger("relaygate.vertex")

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_MARGIN = 300.0


def _expiry(creds: Any) -> float | None:
    expiry = getattr(creds, "expiry", None)
    if not isinstance(expiry, dt.datetime):
        return None
    if expiry.tzinfo is None:  # google-auth keeps naive UTC datetimes
        expiry = expiry.replace(tzinfo=dt.UTC)
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
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes
        )
    if kind == "authorized_user":
        return user_credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes
        )
    raise gexc.DefaultCredentialsError(  # type: ignore[no-untyped-call]
        f"credentials_file holds {kind!r} credentials; expected service_account or authorized_user "
        "(point GOOGLE_APPLICATION_CREDENTIALS at other kinds and leave credentials_file unset)"
    )


class GoogleToken(RefreshingToken):
    """One provider's Google credentials and its current access token (see `proxy.tokens`).

    After a failure with no usable token, requests fail at once for the back-off instead
    of each waiting for another attempt (finding no ADC takes seconds).
    """

    what = "a Google access token"

    def __init__(
        self,
        *,
        provider: str,
        credentials_file: str | None = None,
        scopes: Sequence[str] = (CLOUD_PLATFORM,),
        margin: float = DEFAULT_MARGIN,
        timeout: float = 30.0,
        settings: TransportSettings | None = None,
    ) -> None:
        super().__init__(provider=provider, margin=margin)
        self.credentials_file = credentials_file
        self.scopes = list(scopes)
        self.transport = UrllibRequest(timeout, settings)
        self._credentials: Any = None  # touched only inside the single-flight fetch
        #: How many google-auth refreshes ran (loading credentials is not one).
        self.refreshes = 0

    # -------------------------------------------------------------- blocking (worker thread)

    def _load(self) -> Any:
        if self.credentials_file is None:
            creds, _ = google.auth.default(scopes=self.scopes, request=self.transport)
            return creds
        return load_credentials_file(self.credentials_file, self.scopes)

    def _fetch(self) -> Token:
        try:
            if self._credentials is None:
                self._credentials = self._load()
            self.refreshes += 1
            self._credentials.refresh(self.transport)
        except (gexc.GoogleAuthError, ValueError, OSError) as exc:
            raise TokenFetchError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        value = self._credentials.token
        if not isinstance(value, str) or not value:
            raise TokenFetchError("the credentials produced no access token")
        return Token(value, _expiry(self._credentials))
