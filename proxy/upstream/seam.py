"""`Upstream`: the HTTP machinery a provider composes, whatever transport sits under it.

A provider holds one `Upstream` (`self.upstream = Upstream(name, options)`), starts and
closes it with itself, and talks to its upstream only through it: `request` (status and
headers in; failures already `proxy.errors`; redirects, unknown statuses and encodings
it cannot decode refused), `read_body` / `error_body` / `chunks` (the body, capped, the
connection freed either way), `error_headers` / `relayed_headers` (what the client
should see of the upstream's rate limits), `redact` (the provider's own secrets out of
a relayed message) and `fetch_images` (SSRF-guarded, one policy for every provider).

The YAML keys it reads are every HTTP provider's: `transport`, `connect_timeout`,
`read_timeout`, `pool_timeout`, `max_connections`, `max_response_size`, `tls`, `proxy`
(and `fetch_images` / `image_fetch` where the provider fetches images).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping

import aiohttp

from ..config.load import parse_size
from ..config.options import Options
from ..errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from . import images
from .aio import AioTransport
from .lean import HTTPClient
from .proxies import environment_proxies, proxy_for
from .tls import TLSSettings
from .transport import (
    ConnectFailed,
    HTTPClientError,
    PoolTimeout,
    ProtocolError,
    Response,
    ResponseTooLarge,
    TLSFailed,
    Transport,
    TransportSettings,
)

log = logging.getLogger("relaygate.upstream")

TRANSPORTS = ("lean", "aiohttp")
#: An error body is only read for its message: more than this is not kept.
MAX_ERROR_BODY = 1 << 20
#: Upstream headers a client is told about: rate limits and timing (OpenAI's names;
#: Azure and others use the same).
_RELAYED = ("retry-after", "retry-after-ms", "openai-processing-ms")
_RELAYED_PREFIX = "x-ratelimit-"
_REDACTED = "[redacted]"
_MIN_SECRET_RUN = 10  # a quoted piece of a secret this long is redacted too
_DECODE_SLICE = 1 << 18


class Upstream:
    """One provider's connection to its upstream (see the module docstring)."""

    def __init__(self, name: str, options: Options, *, images_default: bool | None = None) -> None:
        self.name = name
        self.transport_kind: str = options.str("transport", "lean", choices=TRANSPORTS)
        use_proxy: bool = options.bool("proxy", True)
        proxies, no_proxy = environment_proxies() if use_proxy else ({}, "")
        for scheme, url in proxies.items():
            if not url.lower().startswith(("http://", "//")) and "://" in url:
                raise options.error(
                    "proxy",
                    f"the {scheme} proxy from the environment must be an http:// URL "
                    "(or set proxy: false to connect directly)",
                )
        self.settings = TransportSettings(
            limit=options.int("max_connections", 256, minimum=1),
            connect_timeout=options.number("connect_timeout", 10.0),
            read_timeout=options.number("read_timeout", 600.0),
            pool_timeout=options.number("pool_timeout", 30.0),
            max_body_size=parse_size(options, "max_response_size", 64 * 1024 * 1024),
            proxies=proxies,
            no_proxy=no_proxy,
        )
        self.tls = TLSSettings.from_options(options)
        #: What this provider may fetch on a client's behalf (disabled: no keys read).
        self.images = (
            images.ImagePolicy.from_options(options, default=images_default)
            if images_default is not None
            else images.ImagePolicy()
        )
        self._transport: Transport | None = None
        self._image_session: aiohttp.ClientSession | None = None

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.tls is not None:
            self.settings.ssl_context = self.tls.context(self.name)
        if self.transport_kind == "aiohttp":
            self._transport = AioTransport(self.settings)
        else:
            self._transport = HTTPClient(self.settings)

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
        if self._image_session is not None:
            await self._image_session.close()
            self._image_session = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise UpstreamUnavailable(f"provider {self.name!r} is not started")
        return self._transport

    # -------------------------------------------------------------- requests

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> Response:
        """Send one request; returns once status and headers are in.

        Raises `proxy.errors`: transport failures retryable (`transport_error`), a header
        or path HTTP/1.1 cannot carry a 400, and an answer that is no final HTTP answer
        (a redirect, an unknown status) or comes in an encoding the gateway cannot
        decode a 502.
        """
        try:
            resp = await self.transport.request(method, url, headers, body)
        except ValueError as exc:  # a header or path the HTTP/1.1 framing cannot carry
            raise InvalidRequest(f"The request cannot be forwarded: {exc}.") from None
        except (HTTPClientError, TimeoutError) as exc:
            raise self.transport_error(exc) from exc
        status = resp.status
        if status < 200 or status > 599 or 300 <= status < 400:
            resp.close()
            what = "a redirect" if 300 <= status < 400 else "a status HTTP does not define"
            raise UpstreamError(
                f"provider {self.name!r} answered HTTP {status}, {what}; the gateway does not follow or relay it",
                code="bad_upstream_response",
            )
        encoding = resp.headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return self._decoded(resp, encoding)
        return resp

    def _decoded(self, resp: Response, encoding: str) -> Response:
        kind = encoding.strip().lower()
        if kind not in ("gzip", "x-gzip", "deflate"):
            resp.close()
            raise UpstreamError(
                f"provider {self.name!r} answered in Content-Encoding {encoding!r}, which the gateway cannot decode",
                code="bad_upstream_response",
            )
        return Decoded(resp, kind, self.settings.max_body_size)

    def transport_error(self, exc: BaseException) -> GatewayError:
        """The domain error for a failure to talk to the upstream at all (all retryable)."""
        if isinstance(exc, PoolTimeout):
            return UpstreamUnavailable(
                f"provider {self.name!r} has no free connection (max_connections reached for pool_timeout)",
                code="upstream_pool_timeout",
            )
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"provider {self.name!r} timed out")
        if isinstance(exc, TLSFailed):
            log.warning("provider %s: TLS failed: %s (%s)", self.name, exc, exc.reason)
            return UpstreamUnavailable(f"TLS with provider {self.name!r} failed", code="upstream_tls_error")
        if isinstance(exc, ConnectFailed):
            return UpstreamUnavailable(f"cannot connect to provider {self.name!r}")
        if isinstance(exc, ResponseTooLarge):
            log.warning("provider %s: %s", self.name, exc)
            return UpstreamError(f"provider {self.name!r} sent a response over the gateway's limits")
        if isinstance(exc, HTTPClientError):
            log.warning("provider %s: %s", self.name, exc)
        return UpstreamError(f"provider {self.name!r} failed: {type(exc).__name__}")

    async def read_body(self, resp: Response) -> bytes:
        """A successful response's whole body (capped); frees the connection either way."""
        try:
            data = await resp.read()
        except HTTPClientError as exc:
            resp.close()  # half-read: the connection cannot be reused
            raise self.transport_error(exc) from exc
        except BaseException:  # cancelled: the client left
            resp.close()
            raise
        resp.release()
        return data

    async def error_body(self, resp: Response) -> bytes:
        """An error response's body (empty if it cannot be read, cut at 1 MiB); frees the connection."""
        try:
            data = await _read_at_most(resp, MAX_ERROR_BODY)
        except HTTPClientError:
            resp.close()
            return b""
        except BaseException:
            resp.close()
            raise
        resp.release()
        return data

    async def chunks(self, resp: Response) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; transport failures as `proxy.errors`; released at the end.

        Closed early (the caller stopped at `[DONE]`, or the client left), the response
        is released: its connection is reused only if the body had in fact ended.
        """
        ok = False
        try:
            async for data in resp.iter_chunks():
                yield data
            ok = True
        except GeneratorExit:
            ok = True
            raise
        except HTTPClientError as exc:
            raise self.transport_error(exc) from exc
        finally:
            resp.release() if ok else resp.close()

    # -------------------------------------------------------------- what the client sees

    @staticmethod
    def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
        """The upstream's rate-limit and timing headers (`retry-after-ms`, `x-ratelimit-*`, ...)."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            if name.startswith(_RELAYED_PREFIX) or name in _RELAYED:
                out[name] = value
        return out

    def finish_error(self, err: GatewayError, headers: Mapping[str, str], secrets: Iterable[str]) -> GatewayError:
        """Relay the rate-limit headers with an upstream error and redact `secrets` from its message."""
        relayed = self.relayed_headers(headers)
        if relayed:
            err.headers = {**relayed, **err.headers}
        return redact(err, secrets)

    # -------------------------------------------------------------- images

    async def fetch_images(self, urls: Iterable[str]) -> dict[str, tuple[bytes, str]]:
        """Each distinct URL fetched once under this provider's `ImagePolicy`."""
        if self._image_session is None:
            self._image_session = _image_session(self.settings)
        s = self.settings
        return await images.fetch_images(
            self._image_session, urls, self.images, lambda url: proxy_for(url, s.proxies, s.no_proxy)
        )


def redact(err: GatewayError, secrets: Iterable[str]) -> GatewayError:
    """`err` with every secret (or a quoted run of 10+ of its characters) out of its message."""
    message = err.message
    for secret in secrets:
        if len(secret) < 8:
            continue
        message = message.replace(secret, _REDACTED)
        if len(secret) > _MIN_SECRET_RUN:
            for i in range(len(secret) - _MIN_SECRET_RUN + 1):
                piece = secret[i : i + _MIN_SECRET_RUN]
                if piece in message:
                    message = _redact_run(message, secret, piece)
    if message != err.message:
        err.message = message
        err.args = (message,)
    return err


def _redact_run(message: str, secret: str, piece: str) -> str:
    """Replace the longest run of `secret` around each occurrence of `piece`."""
    out = []
    pos = 0
    while (at := message.find(piece, pos)) >= 0:
        start, end = at, at + len(piece)
        s_at = secret.find(piece)
        while start > pos and s_at > 0 and message[start - 1] == secret[s_at - 1]:
            start -= 1
            s_at -= 1
        s_end = s_at + (end - start)
        while end < len(message) and s_end < len(secret) and message[end] == secret[s_end]:
            end += 1
            s_end += 1
        out.append(message[pos:start])
        out.append(_REDACTED)
        pos = end
    out.append(message[pos:])
    return "".join(out)


async def _read_at_most(resp: Response, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.iter_chunks():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            resp.close()
            break
    return b"".join(parts)[:limit]


def _image_session(settings: TransportSettings) -> aiohttp.ClientSession:
    """The session image fetches go out on (they pin checked IPs, which aiohttp does well).

    Image hosts are anywhere on the internet: they are verified against the system's trust
    store, not the provider's `tls` (which is about its API's own certificate).
    """
    connector = aiohttp.TCPConnector(limit=settings.limit, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )


class Decoded:
    """A gzip or deflate response, decoded as it arrives; its decoded size is capped too."""

    __slots__ = ("_inner", "_max", "_wbits", "headers", "status")

    def __init__(self, inner: Response, kind: str, max_body_size: int) -> None:
        self._inner = inner
        self._max = max_body_size
        self.status = inner.status
        headers = dict(inner.headers)
        headers.pop("content-encoding", None)
        headers.pop("content-length", None)
        self.headers: Mapping[str, str] = headers
        self._wbits = 31 if kind in ("gzip", "x-gzip") else 47  # 47: a zlib or gzip header

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        # Decoded in slices, so a small compressed chunk cannot expand into gigabytes at once.
        decoder = zlib.decompressobj(self._wbits)
        try:
            async for data in self._inner.iter_chunks():
                while data:
                    out = decoder.decompress(data, _DECODE_SLICE)
                    data = decoder.unconsumed_tail
                    if out:
                        yield out
            tail = decoder.flush()
        except zlib.error as exc:
            raise ProtocolError(f"the upstream's compressed body is corrupt: {exc}") from exc
        if tail:
            yield tail

    async def read(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if size > self._max:
                raise ResponseTooLarge(f"the upstream's decoded body is over {self._max} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self._inner.release()

    def close(self) -> None:
        self._inner.close()
