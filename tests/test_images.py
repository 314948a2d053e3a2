"""proxy.fetch: the image fetcher's SSRF guard, caps and sniffing, against a loopback server."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.upstream import images
from proxy.upstream.images import fetch_image, is_public_address, sniff_image

SEEN = web.AppKey("seen", list)
Server = tuple[str, web.Application]
Session = aiohttp.ClientSession

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
GIF = b"GIF89a" + b"\x00" * 10
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 10


def _app() -> web.Application:
    app = web.Application()
    seen: list[str] = []
    app[SEEN] = seen

    async def image(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Host", ""))
        return web.Response(body=PNG, content_type="application/octet-stream")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"x" * 5000)

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"x" * 1000)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(body=PNG)

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    for path, handler in [("/img.png", image), ("/big", big), ("/chunked", big_chunked), ("/slow", slow),
                          ("/text", text), ("/redirect", redirect), ("/missing", missing)]:
        app.router.add_get(path, handler)
    return app


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app = _app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    async with aiohttp.ClientSession() as s:
        yield s


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("data", "expected"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"), (b"hello", None)],
)
def test_sniff_image(data: bytes, expected: str | None) -> None:
    assert sniff_image(data) == expected


@pytest.mark.parametrize(
    "addr",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::1",
     "224.0.0.1", "255.255.255.255",
     # S7: every embedded-IPv4 form, and the IPv6 ranges Python's tables may not know
     "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b:1::a9fe:a9fe", "64:ff9b:1::808:808",
     "::a9fe:a9fe", "::808:808", "::ffff:0:a9fe:a9fe", "::ffff:0:808:808", "2001:0:4136:e378:8000:63bf:56fe:5ef6",
     "fec0::1", "3fff::1", "5f00::1", "2001:db8::1", "100::1", "fe80::1%1"],
)
def test_private_addresses_are_refused(addr: str) -> None:
    assert not is_public_address(ipaddress.ip_address(addr))


@pytest.mark.parametrize(
    "addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_pass(addr: str) -> None:
    assert is_public_address(ipaddress.ip_address(addr))


# ---------------------------------------------------------------- the guard


async def test_loopback_refused_by_default(server: Server, session: Session) -> None:
    url, app = server
    with pytest.raises(InvalidRequest, match="private or reserved") as info:
        await fetch_image(session, url + "/img.png")
    assert info.value.status == 400
    assert app[SEEN] == []  # refused before any connection


async def test_localhost_name_refused(server: Server, session: Session) -> None:
    url, app = server
    with pytest.raises(InvalidRequest, match="private or reserved"):
        await fetch_image(session, url.replace("127.0.0.1", "localhost") + "/img.png")
    assert app[SEEN] == []


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://[::ffff:a9fe:a9fe]/"]
)
async def test_metadata_addresses_refused(session: Session, url: str) -> None:
    with pytest.raises(InvalidRequest, match="private or reserved"):
        await fetch_image(session, url, timeout=1)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x", "http://"])
async def test_non_http_refused(session: Session, url: str) -> None:
    with pytest.raises(InvalidRequest, match="http"):
        await fetch_image(session, url)


async def test_credentials_in_url_refused(session: Session) -> None:
    with pytest.raises(InvalidRequest, match="credentials"):
        await fetch_image(session, "http://user:pw@example.com/x.png")


async def test_redirect_target_is_rechecked(
    server: Server, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop passes the guard; the redirect to the metadata address must not."""
    url, _ = server
    monkeypatch.setattr(images, "is_public_address", lambda ip: str(ip) == "127.0.0.1")
    target = "http://169.254.169.254/latest/meta-data/iam/"
    with pytest.raises(InvalidRequest, match="private or reserved"):
        await fetch_image(session, f"{url}/redirect?to={target}", timeout=2)


# ---------------------------------------------------------------- the allowed path


async def test_allowed_fetch_sniffs_type(server: Server, session: Session) -> None:
    url, app = server
    data, media_type = await fetch_image(session, url + "/img.png", allow_private=True)
    assert (data, media_type) == (PNG, "image/png")
    assert app[SEEN] == [url.removeprefix("http://")]  # Host header names the URL's host


async def test_redirect_followed(server: Server, session: Session) -> None:
    url, _ = server
    data, _ = await fetch_image(session, f"{url}/redirect?to=/img.png", allow_private=True)
    assert data == PNG


async def test_redirect_loop_capped(server: Server, session: Session) -> None:
    url, _ = server
    loop_url = f"{url}/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/redirect"
    with pytest.raises(InvalidRequest):
        await fetch_image(session, loop_url, allow_private=True)


@pytest.mark.parametrize("path", ["/big", "/chunked"])
async def test_size_cap(server: Server, session: Session, path: str) -> None:
    url, _ = server
    with pytest.raises(InvalidRequest, match=r"limit (of|is) 1000 bytes"):
        await fetch_image(session, url + path, max_bytes=1000, allow_private=True)


async def test_timeout(server: Server, session: Session) -> None:
    url, _ = server
    with pytest.raises(InvalidRequest, match=r"longer than 0\.2 s"):
        await fetch_image(session, url + "/slow", timeout=0.2, allow_private=True)


async def test_not_an_image(server: Server, session: Session) -> None:
    url, _ = server
    with pytest.raises(InvalidRequest, match="PNG, JPEG, GIF or WebP"):
        await fetch_image(session, url + "/text", allow_private=True)


async def test_http_error(server: Server, session: Session) -> None:
    url, _ = server
    with pytest.raises(InvalidRequest, match="HTTP 404"):
        await fetch_image(session, url + "/missing", allow_private=True)


async def test_connection_refused_is_400(session: Session) -> None:
    with pytest.raises(InvalidRequest, match="failed"):
        await fetch_image(session, "http://127.0.0.1:9/x.png", allow_private=True, timeout=2)


async def test_next_address_tried_when_one_refuses(
    server: Server, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server

    async def two_addresses(host: str, port: int, allow_private: bool) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("127.0.0.1")]  # .2 is not listening

    monkeypatch.setattr(images, "_resolve", two_addresses)
    data, _ = await fetch_image(session, url.replace("127.0.0.1", "images.test") + "/img.png")
    assert data == PNG


# ---------------------------------------------------------------- TLS with a pinned address


def _tls_pair(tmp_path: Path, names: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a cert for `names`, client context trusting only its CA)."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relaygate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server_ctx, client_ctx


@pytest.mark.parametrize(("names", "ok"), [(["images.test"], True), (["someone-else.test"], False)])
async def test_https_pinned_to_checked_ip_still_verifies_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str], ok: bool
) -> None:
    server_ctx, client_ctx = _tls_pair(tmp_path, names)
    runner = web.AppRunner(_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def fake_dns(host: str, *args: object, **kwargs: object) -> object:
        assert host == "images.test"  # only the check resolves; the connection goes to the IP
        return await real("127.0.0.1", *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", fake_dns)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as s:
            url = f"https://images.test:{port}/img.png"
            if ok:
                data, media_type = await fetch_image(s, url, allow_private=True)
                assert (data, media_type) == (PNG, "image/png")
            else:
                with pytest.raises(InvalidRequest, match="failed"):
                    await fetch_image(s, url, allow_private=True)
    finally:
        await runner.cleanup()
