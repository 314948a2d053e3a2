"""Opening one upstream connection for the lean client: Happy Eyeballs, proxies, TLS.

Every address the name resolves to is tried the way aiohttp does it (aiohappyeyeballs,
RFC 8305: IPv6 and IPv4 raced with a 250 ms head start), so a host whose first address
is dead still connects. Through an egress proxy, an `https` origin is reached with a
`CONNECT` tunnel and TLS started inside it; an `http` origin is sent to the proxy in
absolute form (see `Pool`). TLS failures say what failed (`TLSFailed.reason`).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import aiohappyeyeballs
from yarl import URL

from .transport import ConnectFailed, TLSFailed

HAPPY_EYEBALLS_DELAY = 0.25
_MAX_CONNECT_HEAD = 16 * 1024


def basic_authorization(url: URL) -> str | None:
    """Basic credentials from a URL's userinfo (a proxy's, or an upstream's), else None."""
    if url.user is None:
        return None
    pair = f"{unquote(url.raw_user or '')}:{unquote(url.raw_password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def tls_reason(exc: BaseException) -> str:
    """What went wrong in a handshake, in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return type(exc).__name__


AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> Sequence[AddrInfo]:
    """Every address of `host` (tests replace this to script DNS)."""
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


async def open_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected TCP socket to `host:port`, every resolved address raced."""
    try:
        infos = await resolve(loop, host, port)
    except OSError as exc:
        raise ConnectFailed(f"cannot resolve {host}: {exc.strerror or type(exc).__name__}") from exc
    try:
        return await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1, loop=loop
        )
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or type(exc).__name__}") from exc


class _TunnelHead(asyncio.Protocol):
    """Collects a proxy's answer to CONNECT (a head and nothing more)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buffer = b""
        self.done: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.done.done():
            self.done.set_result(self.buffer)
        elif len(self.buffer) > _MAX_CONNECT_HEAD and not self.done.done():
            self.done.set_exception(ConnectFailed("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectFailed("the proxy closed the connection during CONNECT"))


async def connect(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    proxy: URL | None = None,
) -> asyncio.Transport:
    """A transport to `host:port` (through `proxy` when given) driving `factory()`'s protocol.

    With a proxy and TLS, the protocol is connected only once the tunnel is up, so it
    never sees the proxy's bytes.
    """
    if proxy is None:
        sock = await open_socket(loop, host, port)
        return await _wrap(loop, factory, sock, ssl_context, host)
    assert proxy.host is not None
    sock = await open_socket(loop, proxy.host, proxy.port or 80)
    if ssl_context is None:  # http origin: requests go to the proxy in absolute form
        return await _wrap(loop, factory, sock, None, host)
    head = _TunnelHead(loop)
    try:
        raw, _ = await loop.create_connection(lambda: head, sock=sock)
    except OSError as exc:
        sock.close()
        raise ConnectFailed(f"cannot connect to proxy {proxy.host}: {type(exc).__name__}") from exc
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        auth = basic_authorization(proxy)
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        raw.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await head.done
        status_line = answer.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[1].startswith(b"2"):
            code = status_line[1].decode("latin-1", "replace") if len(status_line) > 1 else "?"
            raise ConnectFailed(f"proxy {proxy.host} refused to tunnel to {authority} (HTTP {code})")
        protocol = factory()
        try:
            tls = await loop.start_tls(raw, protocol, ssl_context, server_hostname=host)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TLSFailed(f"TLS with {host} through proxy {proxy.host} failed", tls_reason(exc)) from exc
        if tls is None:
            raise ConnectFailed("the proxy closed the connection while TLS started")
        protocol.connection_made(tls)
        return tls
    except BaseException:
        raw.abort()
        raise


async def _wrap(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    host: str,
) -> asyncio.Transport:
    try:
        transport, _ = await loop.create_connection(
            factory, sock=sock, ssl=ssl_context, server_hostname=host if ssl_context is not None else None
        )
    except (ssl.SSLError, ssl.CertificateError) as exc:
        sock.close()
        raise TLSFailed(f"TLS with {host} failed", tls_reason(exc)) from exc
    except OSError as exc:
        sock.close()
        raise ConnectFailed(f"cannot connect to {host}: {type(exc).__name__}") from exc
    except BaseException:
        sock.close()
        raise
    return transport
