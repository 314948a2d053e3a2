"""Microsoft Entra ID (Azure AD) bearer tokens for Azure OpenAI.

A token comes from one of three places: a fixed `ad_token`, the stdout of
`ad_token_command` (a raw token, or JSON like `az account get-access-token` prints), or
the contents of `ad_token_file` (kept fresh by something else: a sidecar, a cron job).
Command and file tokens are fetched again before they expire: the expiry is taken from
the command's JSON, else from the JWT's `exp` claim, else `ad_token_ttl` after the fetch.

Fetching is blocking (a subprocess, a file read); `proxy.tokens.RefreshingToken` runs it
in a worker thread, single-flight, with a short back-off after a failure. Token values
never appear in logs or errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shlex
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.config.options import Options
from proxy.upstream.tokens import RefreshingToken, Token, TokenFetchError

log = logging.getLogger("relaygate.azure")

DEFAULT_TTL = 3000.0  # Entra access tokens live 60-90 min; assume less when nothing says
DEFAULT_MARGIN = 300.0
DEFAULT_COMMAND_TIMEOUT = 60.0


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, unverified (it only schedules the refresh)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def _parse_expiry(data: dict[str, Any], now: float) -> float | None:
    """Expiry from the JSON `az account get-access-token` (and similar tools) print."""
    epoch = data.get("expires_on")
    if isinstance(epoch, str) and epoch.strip().isdigit():
        epoch = int(epoch)
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
        return float(epoch)
    stamp = data.get("expiresOn")
    if isinstance(stamp, str) and stamp.strip():
        try:
            # az prints local time without a zone ("2024-06-01 12:34:56.000000");
            # a naive datetime's timestamp() is read as local time, which is what it means.
            return datetime.fromisoformat(stamp.strip()).timestamp()
        except ValueError:
            pass
    seconds = data.get("expires_in")
    if isinstance(seconds, str) and seconds.strip().isdigit():
        seconds = int(seconds)
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        return now + float(seconds)
    return None


def parse_token_output(text: str, *, ttl: float, now: float | None = None) -> Token:
    """A token from a raw token or JSON `{"accessToken", "expiresOn" | "expires_on"}`."""
    now = time.time() if now is None else now
    text = text.strip()
    if not text:
        raise TokenFetchError("the token source produced nothing")
    expires: float | None = None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TokenFetchError("the token source printed JSON that does not parse") from exc
        value = data.get("accessToken") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenFetchError("the token source's JSON has no accessToken")
        expires = _parse_expiry(data, now)
    else:
        value = text
    if any(ch.isspace() for ch in value):
        raise TokenFetchError("the token source printed more than one token")
    if expires is None:
        expires = jwt_expiry(value)
    return Token(value, expires if expires is not None else now + ttl)


class EntraToken(RefreshingToken):
    """One provider's Entra ID token, refreshed before it expires (see `proxy.tokens`)."""

    what = "an Entra ID token"

    def __init__(
        self,
        *,
        provider: str,
        token: str | None = None,
        command: list[str] | None = None,
        file: str | None = None,
        ttl: float = DEFAULT_TTL,
        margin: float = DEFAULT_MARGIN,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        static = Token(token, jwt_expiry(token)) if token is not None else None
        super().__init__(provider=provider, margin=margin, static=static)
        self.command = command
        self.file = file
        self.ttl = ttl
        self.timeout = timeout

    @classmethod
    def from_options(cls, provider: str, options: Options) -> EntraToken | None:
        """The token source the block configures, or None when it configures none."""
        token = options.secret("ad_token")
        raw_command = options.raw("ad_token_command")
        file = options.str("ad_token_file", None)
        ttl = options.number("ad_token_ttl", DEFAULT_TTL, minimum=1)
        margin = options.number("ad_token_refresh_margin", DEFAULT_MARGIN)
        timeout = options.number("ad_token_timeout", DEFAULT_COMMAND_TIMEOUT, minimum=0.1)
        command: list[str] | None = None
        if raw_command is not None:
            if isinstance(raw_command, str) and raw_command.strip():
                command = shlex.split(raw_command)
            elif isinstance(raw_command, list) and raw_command and all(isinstance(a, str) for a in raw_command):
                command = list(raw_command)
            else:
                raise options.error("ad_token_command", "expected a command line or a list of arguments")
        given = [k for k, v in (("ad_token", token), ("ad_token_command", command), ("ad_token_file", file)) if v]
        if len(given) > 1:
            raise options.error(
                given[1], f"expected only one of ad_token, ad_token_command, ad_token_file; {given[0]} is set too"
            )
        if not given:
            return None
        return cls(provider=provider, token=token, command=command, file=file, ttl=ttl, margin=margin, timeout=timeout)

    # -------------------------------------------------------------- blocking fetch (worker thread)

    def _fetch(self) -> Token:
        if self.command is not None:
            text = self._run_command(self.command)
        elif self.file is not None:
            try:
                text = Path(self.file).read_text(encoding="utf-8")
            except OSError as exc:
                raise TokenFetchError(f"cannot read ad_token_file: {exc.strerror or type(exc).__name__}") from exc
        else:  # pragma: no cover - static tokens never fetch
            raise TokenFetchError("no token source")
        return parse_token_output(text, ttl=self.ttl)

    def _run_command(self, argv: list[str]) -> str:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise TokenFetchError(f"ad_token_command took longer than {self.timeout:g} s") from exc
        except OSError as exc:
            raise TokenFetchError(f"cannot run ad_token_command: {exc.strerror or type(exc).__name__}") from exc
        if proc.returncode != 0:
            last = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            raise TokenFetchError(f"ad_token_command exited with status {proc.returncode}: {last[0][:200]}")
        return proc.stdout
