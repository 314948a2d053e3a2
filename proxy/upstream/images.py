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
import ipaddress
import socket

import aiohttp
from yarl import URL

from ..errors import InvalidRequest

MAX_REDIRECTS = 3
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0

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


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    `is_global` already excludes private, loopback, link-local (169.254.169.254, the
    cloud metadata address), shared (100.64/10), reserved and unspecified ranges and the
    ULA range of AWS's IPv6 metadata address; IPv4 addresses hidden inside IPv6
    (mapped, 6to4, Teredo) are checked as the IPv4 address they carry.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and not is_public_address(inner):
            return False
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


async def _connect(session: aiohttp.ClientSession, url: URL, addresses: list[IPAddress]) -> aiohttp.ClientResponse:
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
            return await session.get(pinned, headers=headers, allow_redirects=False, **kwargs)  # type: ignore[arg-type]
        except aiohttp.ClientSSLError:
            raise  # a certificate problem is not solved by another address
        except aiohttp.ClientConnectorError as exc:
            last = exc
    assert last is not None
    raise last


async def _fetch(session: aiohttp.ClientSession, url: URL, max_bytes: int, allow_private: bool) -> bytes:
    for _hop in range(MAX_REDIRECTS + 1):
        _check_url(url)
        assert url.host is not None  # _check_url
        port = url.explicit_port or (443 if url.scheme == "https" else 80)
        addresses = await _resolve(url.host, port, allow_private)
        async with await _connect(session, url, addresses) as resp:
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
        data = await asyncio.wait_for(_fetch(session, parsed, max_bytes, allow_private), timeout)
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
