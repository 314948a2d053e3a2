"""Client-key authentication from the YAML `clients:` section.

Keys are accepted as `Authorization: Bearer <key>` (OpenAI clients) or `api-key: <key>`
(Azure-style clients). Only sha256 digests are kept in memory; the presented key is
hashed and looked up, then compared with `secrets.compare_digest`.
"""

from __future__ import annotations

import hashlib
import secrets

from ..errors import AuthenticationFailed
from ..hookspecs import hookimpl
from ..types import Call, Client

ANONYMOUS = Client("anonymous")


def presented_key(call: Call) -> str | None:
    auth = call.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return call.headers.get("api-key") or None


@hookimpl(trylast=True)
def authenticate(call: Call) -> Client:
    config = call.config
    if config.clients is None:
        return ANONYMOUS
    key = presented_key(call)
    if key is None:
        raise AuthenticationFailed(
            "Missing API key: send it as 'Authorization: Bearer <key>' or 'api-key: <key>'.",
            code="missing_api_key",
        )
    # Header values hold the bytes as sent (non-UTF-8 ones as surrogates): hash those bytes.
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    entry = config.keys_by_digest.get(digest)
    if entry is None or not secrets.compare_digest(entry.digest, digest):
        raise AuthenticationFailed("Incorrect API key provided.")
    return Client(entry.name, entry.models)
