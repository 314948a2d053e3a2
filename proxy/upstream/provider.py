"""The provider contract: one upstream account, created from its YAML block.

A provider class is registered under a type name by a plugin's `register_providers`
hook; the core instantiates one per `providers.<name>` entry, starts it with the app
(where it opens its connection pool) and closes it on shutdown or after a reload once
the requests that began on it have finished.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterable

import aiohttp

from ..config.options import Options
from ..errors import (
    ConfigError,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Call, ModelInfo, Reply, Target
from . import lean

#: What a failed upstream exchange raises, from either client.
TRANSPORT_ERRORS = (aiohttp.ClientError, lean.HTTPClientError, asyncio.TimeoutError)

#: Either client's response: `read()`, then `release()` (reusable) or `close()`.
UpstreamResponse = aiohttp.ClientResponse | lean.Response

#: What `register` takes: the class, or "module:Class" to import only when a config uses
#: the type (so a plugin with a heavy SDK costs nothing where it is not configured).
ProviderRef = type["Provider"] | str

#: The callback a plugin's `register_providers(register)` hook receives:
#: ``register("bedrock", BedrockProvider)`` or ``register("bedrock", "pkg.mod:BedrockProvider")``.
RegisterProvider = Callable[[str, ProviderRef], None]


def resolve_provider(kind: str, ref: ProviderRef) -> type[Provider]:
    """The class behind a registered reference, imported on first use."""
    cls: object = ref
    if isinstance(ref, str):
        module_name, _, attr = ref.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"provider type {kind!r}: cannot import {ref!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"provider type {kind!r} is registered with {ref!r}, which is not a Provider class")
    return cls


class Provider:
    """Base class of every provider type.

    Subclasses read their own keys from `options` in `__init__` (after calling
    `super().__init__`); the core refuses any key nobody read. No I/O in `__init__`:
    `relaygate check` builds providers without starting them.
    """

    # Class defaults; a provider may set them per instance (Azure's v1 mode passes through).
    #: Endpoints this provider serves; the router skips targets that cannot serve a call.
    endpoints: frozenset[str] = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})
    #: Whether arbitrary other `/v1/*` routes may be forwarded to it byte for byte.
    supports_passthrough: bool = False
    #: Whether it can apply a route's `guardrail:`; `check` refuses such routes otherwise.
    supports_guardrails: bool = False
    #: Whether `start` opens one pooled aiohttp `self.session` for this upstream.
    uses_session: bool = False
    #: Whether `start` opens `self.http`, the lean keep-alive client of the hot path.
    uses_http: bool = False
    #: How `/v1/responses` reaches it: "native" sends the Responses request upstream as it
    #: is; "translate" has the core translate it onto this provider's chat path. YAML's
    #: `responses:` overrides it per provider (docs/responses.md).
    responses: str = "translate"
    _session: aiohttp.ClientSession | None = None
    _http: lean.HTTPClient | None = None

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.type: str = options.raw("type")
        self.connect_timeout: float = options.number("connect_timeout", 10.0)
        self.read_timeout: float = options.number("read_timeout", 600.0)
        self.max_connections: int = options.int("max_connections", 256, minimum=1)
        self.responses = options.str("responses", self.responses, choices=("native", "translate"))

    def serves(self, endpoint: str) -> bool:
        """Whether a call to `endpoint` may be sent here; the attempt loop skips targets that cannot."""
        if endpoint == RESPONSES:
            return self.responses == "native" or CHAT in self.endpoints
        return endpoint in self.endpoints

    def target_options(self, opts: Options) -> dict[str, object]:
        """Read this provider's extra keys on a route target (e.g. Vertex `endpoint_id`).

        Keys left unread are refused, so a provider that takes none needs no override.
        """
        return {}

    async def start(self) -> None:
        """Open connection pools and credential objects (once, with the app).

        The base opens the provider's pooled upstream client(s) as `uses_http` and
        `uses_session` ask; subclasses that open more call `super().start()` too.
        """
        if self.uses_http:
            self._http = self.new_http_client()
        if self.uses_session:
            self._session = self.new_session()

    async def close(self) -> None:
        """Release everything `start` opened."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def http(self) -> lean.HTTPClient:
        """The pooled keep-alive client (`uses_http`), open between start and close."""
        if self._http is None:
            raise UpstreamUnavailable(f"provider {self.name!r} is not started")
        return self._http

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled upstream session (`uses_session`), open between start and close."""
        if self._session is None:
            raise UpstreamUnavailable(f"provider {self.name!r} is not started")
        return self._session

    async def list_models(self) -> list[ModelInfo] | None:
        """The upstream models, or None when this provider cannot list them.

        Called by `/v1/models`; implementations cache (a listing is never fetched per request).
        """
        return None

    async def send(self, call: Call, target: Target) -> Reply:
        """Send `call` upstream as `target` and return the reply.

        Raise a `proxy.errors.GatewayError` on failure; a retryable one before the
        reply is returned (or before a stream's first chunk) lets the core fall back.
        """
        raise InvalidRequest(f"provider {self.name!r} does not serve {call.endpoint}")

    # -------------------------------------------------------------- helpers

    def transport_error(self, exc: BaseException) -> GatewayError:
        """The domain error for a failure to talk to the upstream at all (all retryable)."""
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeout(f"provider {self.name!r} timed out")
        if isinstance(exc, (aiohttp.ClientConnectorError, lean.ConnectFailed)):
            return UpstreamUnavailable(f"cannot connect to provider {self.name!r}")
        return UpstreamError(f"provider {self.name!r} failed: {type(exc).__name__}")

    async def read_body(self, resp: UpstreamResponse) -> bytes:
        """A successful upstream response's whole body; frees the connection either way."""
        try:
            data = await resp.read()
        except TRANSPORT_ERRORS as exc:
            resp.close()  # half-read: the connection cannot be reused
            raise self.transport_error(exc) from exc
        except BaseException:  # cancelled: the client left
            resp.close()
            raise
        resp.release()
        return data

    @staticmethod
    async def error_body(resp: UpstreamResponse) -> bytes:
        """An upstream error response's body (empty if it cannot be read); frees the connection."""
        try:
            data = await resp.read()
        except TRANSPORT_ERRORS:
            resp.close()
            return b""
        except BaseException:
            resp.close()
            raise
        resp.release()
        return data

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> lean.Response:
        """`self.http.request`, with failures turned into what the core's fallbacks understand."""
        try:
            return await self.http.request(method, url, headers, body)
        except ValueError as exc:  # a header or path the HTTP/1.1 framing cannot carry
            raise InvalidRequest(f"The request cannot be forwarded: {exc}.") from None
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc) from exc

    def new_http_client(self) -> lean.HTTPClient:
        """The lean keep-alive client with this provider's limits and timeouts."""
        return lean.HTTPClient(
            limit=self.max_connections, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
        )

    def new_session(self, **kwargs: object) -> aiohttp.ClientSession:
        """One pooled session per upstream, with stream-safe timeouts.

        `total=None` because a long stream is not a timeout; connect and per-read limits
        bound the time a dead upstream can hold a request.
        """
        connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300, enable_cleanup_closed=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            # One session serves every client: an upstream's Set-Cookie must never be
            # replayed on someone else's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            **kwargs,  # type: ignore[arg-type]
        )
