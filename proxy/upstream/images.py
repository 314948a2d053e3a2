"""Fetching image URLs on a client's behalf, without becoming an SSRF hole.

Providers that cannot take an image URL themselves (Bedrock Converse, Vertex) may fetch
it when the operator allows it. A URL from a client can point anywhere, so every hop
(the URL and each redirect) is resolved here, every resolved address is checked against
private, loopback, link-local, metadata and other non-global ranges, and the request is
then sent to the checked IP itself (Host header and TLS server name kept), so a DNS
answer that changes between the check and the connect (rebinding) cannot slip through.
Size and time are capped; failures are `InvalidRequest`s that say what went wrong.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from ..config.options import Options
from ..errors import InvalidRequest

MAX_REDIRECTS = 3
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_IMAGES = 16
#: Fetches of one request running at once (the rest wait their turn).
CONCURRENCY = 4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _bad(message: str, code: str = "invalid_image_url") -> InvalidRequest:
    return InvalidRequest(message, code=code)


def sniff_image(data: bytes) -> str | None:
    """The media type of PNG, JPEG, GIF or WebP bytes, from their magic numbers."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


#: IPv6 ranges refused outright: NAT64 local-use (its IPv4 sits at a prefix-dependent
#: place), deprecated site-local, documentation (old and new), SRv6 SIDs, discard-only.
_DENIED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in ("64:ff9b:1::/48", "fec0::/10", "3fff::/20", "2001:db8::/32", "5f00::/16", "100::/64")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the forms that reach one.

    IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (and so `::1`, `::`),
    SIIT `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::` and Teredo.
    """
    value = int(ip)
    high = value >> 32
    if high in (0, 0xFFFF, 0xFFFF0000) or ip in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return ip.sixtofour or (ip.teredo[1] if ip.teredo else None)


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    `is_global` already excludes private, loopback, link-local (169.254.169.254, the
    cloud metadata address), shared (100.64/10), reserved and unspecified ranges and the
    ULA range of AWS's IPv6 metadata address. An IPv4 address hidden inside IPv6 is
    checked as the IPv4 address it carries, and `_DENIED_V6` is refused whatever the
    Python version's tables say.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or any(ip in net for net in _DENIED_V6):
            return False
        if int(ip) >> 32 in (0, 0xFFFF0000):
            return False  # IPv4-compatible (deprecated) and SIIT: never a public destination
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner) and (ip in _NAT64 or ip.is_global)
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """The addresses to connect to, in resolver order; every one must pass the check."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _bad(f"Could not resolve the image URL's host {host!r}.") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))
        if not addresses:
            raise _bad(f"Could not resolve the image URL's host {host!r}.")
    if not allow_private:
        for ip in addresses:
            if not is_public_address(ip):
                raise InvalidRequest(
                    f"The image URL's host {host!r} resolves to a private or reserved address; "
                    "the gateway does not fetch from those.",
                    code="invalid_image_url",
                )
    return addresses


def _check_url(url: URL) -> None:
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad("Image URLs must be http(s) URLs or data: URLs.")
    if url.user is not None or url.password is not None:
        raise _bad("Image URLs must not carry credentials.")


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    length = resp.content_length
    if length is not None and length > max_bytes:
        raise InvalidRequest(
            f"The image at the URL is {length} bytes; the limit is {max_bytes} bytes.", code="image_too_large"
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise _bad(f"The image at the URL exceeds the limit of {max_bytes} bytes.", "image_too_large")
        parts.append(chunk)
    return b"".join(parts)


async def _connect(
    session: aiohttp.ClientSession, url: URL, addresses: list[IPAddress], proxy: URL | None
) -> aiohttp.ClientResponse:
    """GET `url` from the first checked address that accepts a connection.

    The Host header and the TLS server name stay the URL's own, so virtual hosting and
    certificate checks work as if the name had been used.
    """
    host = url.host
    headers = {"Host": url.raw_authority, "Accept": "image/*", "Accept-Encoding": "identity"}
    kwargs = {"server_hostname": host} if url.scheme == "https" else {}
    last: aiohttp.ClientConnectorError | None = None
    for ip in addresses:
        pinned = url.with_host(str(ip)) if str(ip) != host else url
        try:
            return await session.get(
                pinned, headers=headers, allow_redirects=False, proxy=proxy, **kwargs  # type: ignore[arg-type]
            )
        except aiohttp.ClientSSLError:
            raise  # a certificate problem is not solved by another address
        except aiohttp.ClientConnectorError as exc:
            last = exc
    assert last is not None
    raise last


ProxyFor = Callable[[URL], "URL | None"]


async def _fetch(
    session: aiohttp.ClientSession, url: URL, max_bytes: int, allow_private: bool, proxy_for: ProxyFor | None
) -> bytes:
    for _hop in range(MAX_REDIRECTS + 1):
        _check_url(url)
        assert url.host is not None  # _check_url
        port = url.explicit_port or (443 if url.scheme == "https" else 80)
        addresses = await _resolve(url.host, port, allow_private)
        proxy = proxy_for(url) if proxy_for is not None else None
        async with await _connect(session, url, addresses, proxy) as resp:
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    break
                url = url.join(URL(location))
                continue
            if resp.status != 200:
                raise _bad(f"Fetching the image URL failed with HTTP {resp.status}.")
            return await _read_capped(resp, max_bytes)
    raise _bad(f"The image URL redirected more than {MAX_REDIRECTS} times.")


async def fetch_image(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private: bool = False,
    proxy_for: ProxyFor | None = None,
) -> tuple[bytes, str]:
    """Download an image for a provider that needs the bytes; returns (data, media type).

    :param allow_private: skip the address check (tests against loopback fakes, or an
        operator who deliberately serves images from a private network).
    :raises InvalidRequest: bad URL, refused address, HTTP error, too large, too slow,
        or bytes that are not PNG, JPEG, GIF or WebP.
    """
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise _bad("The image URL is not a valid URL.") from exc
    try:
        data = await asyncio.wait_for(_fetch(session, parsed, max_bytes, allow_private, proxy_for), timeout)
    except TimeoutError as exc:
        raise _bad(f"Fetching the image URL took longer than {timeout:g} s.") from exc
    except aiohttp.ClientError as exc:
        raise InvalidRequest(
            f"Fetching the image URL failed ({type(exc).__name__}).", code="invalid_image_url"
        ) from exc
    media_type = sniff_image(data)
    if media_type is None:
        raise InvalidRequest(
            "The image URL did not return a PNG, JPEG, GIF or WebP image.", code="invalid_image_format"
        )
    return data, media_type


@dataclass(slots=True, frozen=True)
class ImagePolicy:
    """What a provider may fetch for one request: one policy for Bedrock and Vertex.

    Read from `fetch_images:` and the `image_fetch:` block (`max_bytes`, `timeout`,
    `max_images`, `allow_private`).
    """

    enabled: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_TIMEOUT
    max_images: int = DEFAULT_MAX_IMAGES
    #: Fetch from private and loopback addresses too: for tests against loopback fakes,
    #: or images deliberately served from a private network; never for the open internet.
    allow_private: bool = False

    @classmethod
    def from_options(cls, options: Options, *, default: bool) -> ImagePolicy:
        enabled = options.bool("fetch_images", default)
        block = options.block("image_fetch")
        policy = cls(
            enabled=enabled,
            max_bytes=block.int("max_bytes", DEFAULT_MAX_BYTES, minimum=1),
            timeout=block.number("timeout", DEFAULT_TIMEOUT, minimum=0.1),
            max_images=block.int("max_images", DEFAULT_MAX_IMAGES, minimum=1),
            allow_private=block.bool("allow_private", False),
        )
        block.check_unused()
        return policy


async def fetch_images(
    session: aiohttp.ClientSession, urls: Iterable[str], policy: ImagePolicy, proxy_for: ProxyFor | None = None
) -> dict[str, tuple[bytes, str]]:
    """Fetch each distinct URL once: {url: (data, media type)}.

    A URL named many times is fetched once, more than `max_images` distinct URLs are
    refused before anything is fetched, and at most `CONCURRENCY` fetches run at once.
    """
    distinct = list(dict.fromkeys(urls))
    if len(distinct) > policy.max_images:
        raise InvalidRequest(
            f"The request has {len(distinct)} image URLs; the gateway fetches at most {policy.max_images} per request.",
            param="messages",
            code="too_many_images",
        )
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(url: str) -> tuple[bytes, str]:
        async with slots:
            return await fetch_image(
                session,
                url,
                max_bytes=policy.max_bytes,
                timeout=policy.timeout,
                allow_private=policy.allow_private,
                proxy_for=proxy_for,
            )

    fetched = await asyncio.gather(*(one(url) for url in distinct))
    return dict(zip(distinct, fetched, strict=True))


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
