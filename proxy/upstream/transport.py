"""What every transport under the `Upstream` seam shares: settings, one response protocol,
one error family.

Two transports sit under it, chosen per provider (`transport: lean | aiohttp`): the lean
HTTP/1.1 client (`proxy.upstream.lean`, the hot path) and aiohttp's client
(`proxy.upstream.aio`). Both take a `TransportSettings`, answer with something that
satisfies `Response`, and raise only `HTTPClientError`s, so a provider never learns
which one it runs on.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

#: Caps on an upstream's response head (what aiohttp's own parser allows is close).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 128
#: Interim (1xx) responses accepted before the real answer.
MAX_INTERIM = 16


class HTTPClientError(Exception):
    """The upstream could not be talked to, or broke the protocol."""


class ConnectFailed(HTTPClientError):
    """No connection could be opened (refused, unreachable, DNS, proxy)."""


class TLSFailed(ConnectFailed):
    """The TLS handshake failed: `reason` says why (for the log, not for clients)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionClosed(HTTPClientError):
    """The upstream closed the connection before the response was complete."""


class ProtocolError(HTTPClientError):
    """The upstream's bytes were not a valid (or an acceptable) HTTP/1.1 response."""


class ResponseTooLarge(ProtocolError):
    """A response head or a whole (non-streamed) body over its cap."""


class ReadTimeout(HTTPClientError, TimeoutError):
    """The upstream sent nothing for `read_timeout` seconds while we waited for it."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """The connection was not established within `connect_timeout` seconds."""


class PoolTimeout(HTTPClientError, TimeoutError):
    """No pooled connection came free within `pool_timeout` seconds."""


class Response(Protocol):
    """An upstream response: status and headers now, the body as it arrives.

    `headers` maps lower-cased names to values (repeated headers joined with ", ").
    The owner ends every response with `release()` (read to the end: the connection
    may be reused) or `close()` (anything else).
    """

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """One provider's pooled client."""

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> Response: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class TransportSettings:
    """What a provider's YAML says about its connections (see docs/config.md)."""

    limit: int = 256
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    pool_timeout: float = 30.0
    idle_timeout: float = 15.0
    #: A whole (non-streamed) response body larger than this is refused.
    max_body_size: int = 64 * 1024 * 1024
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store
    #: Egress proxies by scheme ("http", "https") and the NO_PROXY list; see `proxies`.
    proxies: Mapping[str, str] = field(default_factory=dict)
    no_proxy: str = ""
