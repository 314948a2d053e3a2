"""`transport: aiohttp`: aiohttp's client under the same seam as the lean one.

For what the lean client will not do (an HTTPS egress proxy, whatever aiohttp grows
next) at the CPU cost of aiohttp's request path. It speaks the seam's `Response`
protocol and raises only the seam's `HTTPClientError` family, with the same caps: the
response head (aiohttp's parser: 128 headers, 64 KiB of fields), a whole body's size,
the pool wait and per-read timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

import aiohttp
from yarl import URL

from .connect import tls_reason
from .proxies import proxy_for
from .transport import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    HTTPClientError,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
    TLSFailed,
    TransportSettings,
)


def _error(exc: BaseException, url: str) -> HTTPClientError:
    """The seam's error for an aiohttp failure."""
    origin = str(URL(url).origin()) if "://" in url else url
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TLSFailed(f"TLS with {origin} failed", tls_reason(exc.certificate_error))
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return TLSFailed(f"TLS with {origin} failed", tls_reason(exc.os_error))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(f"connecting to {origin} timed out")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return ReadTimeout(f"no data from {origin} in time")
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError)):
        return ConnectFailed(f"cannot connect to {origin}: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # the proxy refused the tunnel
        return ConnectFailed(f"cannot reach {origin} through the proxy: HTTP {exc.status}")
    if isinstance(exc, aiohttp.ClientResponseError):  # aiohttp's parser refused the answer
        return ProtocolError(f"invalid HTTP response from {origin}: {exc.message}")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return ConnectionClosed(f"{origin} closed the connection early: {type(exc).__name__}")
    if isinstance(exc, asyncio.TimeoutError):
        return ReadTimeout(f"no data from {origin} in time")
    return ProtocolError(f"{origin} failed: {type(exc).__name__}")


class AioResponse:
    """An `aiohttp.ClientResponse` as the seam's `Response`."""

    __slots__ = ("_done", "_resp", "_url", "headers", "max_body_size", "status")

    def __init__(self, resp: aiohttp.ClientResponse, max_body_size: int, done: Callable[[], None]) -> None:
        self._resp = resp
        self._done: Callable[[], None] | None = done
        self._url = str(resp.url)
        self.status = resp.status
        headers: dict[str, str] = {}
        for name, value in resp.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers: Mapping[str, str] = headers
        self.max_body_size = max_body_size

    async def read(self) -> bytes:
        cap = self.max_body_size
        length = self._resp.content_length
        if length is not None and length > cap:
            raise ResponseTooLarge(f"{self._url} answered {length} bytes; the cap is {cap}")
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in self._resp.content.iter_any():
                size += len(chunk)
                if size > cap:
                    raise ResponseTooLarge(f"{self._url} answered more than {cap} bytes")
                parts.append(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _error(exc, self._url) from exc
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _error(exc, self._url) from exc

    def release(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()
        else:  # not read to the end: the connection cannot be reused
            self._resp.close()
        self._free()

    def close(self) -> None:
        self._resp.close()
        self._free()

    def _free(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()


class AioTransport:
    """One pooled `aiohttp.ClientSession` per provider, made on first use in the loop."""

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        #: Connections in use, bounded here so that waiting for one is `pool_timeout`, not a connect timeout.
        self._slots = asyncio.Semaphore(settings.limit)

    def _open(self) -> aiohttp.ClientSession:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.limit,
            ttl_dns_cache=300,
            ssl=s.ssl_context if s.ssl_context is not None else True,
            keepalive_timeout=s.idle_timeout,
        )
        # total=None: a long stream is not a timeout; connect and per-read limits bound a dead upstream.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,  # the seam decodes, with its caps
            # One session serves every client: an upstream's Set-Cookie must never be
            # replayed on someone else's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
        )
        return self._session

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> AioResponse:
        session = self._session or self._open()
        s = self.settings
        parsed = URL(url, encoded=True)
        proxy = proxy_for(parsed, s.proxies, s.no_proxy)
        try:
            async with asyncio.timeout(s.pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"no connection to {parsed.origin()} came free within {s.pool_timeout:g} s ({s.limit} in use)"
            ) from None
        try:
            resp = await session.request(
                method, parsed, headers=list(headers), data=body, allow_redirects=False, proxy=proxy
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._slots.release()
            raise _error(exc, url) from exc
        except BaseException:
            self._slots.release()
            raise
        return AioResponse(resp, s.max_body_size, self._slots.release)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
