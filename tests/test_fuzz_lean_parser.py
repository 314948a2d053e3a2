"""Differential fuzzing: the lean client's response parsing against h11 on the same bytes.

Well-formed responses (any status, headers, Content-Length / chunked / close-delimited
bodies, split at arbitrary points) must come out of both the same. Mangled ones must
never crash the lean client or hang it, and whatever it accepts h11 must accept too
and read the same way (the lean client may be stricter, never laxer).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.testing import split_at
from proxy.upstream import lean

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~"
TOKEN = st.text(TCHAR, min_size=1, max_size=12)
JUNK = [b"\r\n", b"\n", b"\x00", b" ", b":", b"\r", b"0", b"Content-Length: 3\r\n"]
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
_EMPTY_LINES = re.compile(rb"^[\r\n]+|(?<=\r\n\r\n)[\r\n]+(?=HTTP/)")
FRAMING = {"content-length", "transfer-encoding", "connection"}


@dataclass
class Outcome:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Transport:
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool:
        return False


_LOOP = asyncio.new_event_loop()


def lean_parse(pieces: list[bytes]) -> Outcome | None:
    """What the lean client makes of these reads followed by the server closing; None = refused."""
    pool = lean.Pool("http://upstream.test")
    conn = lean._Connection(pool, _LOOP)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    resp = lean.Response(conn)
    conn.response = resp
    for piece in pieces:
        if conn.closed:
            break
        conn.data_received(piece)
    if not conn.closed:
        conn.connection_lost(None)
    if resp._error is not None or not resp._complete or not resp.status:
        return None
    headers = [(k, v) for k, v in resp.headers.items() if k not in FRAMING]
    return Outcome(resp.status, sorted(headers), b"".join(resp._chunks))


def h11_parse(data: bytes) -> Outcome | None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status = 0
    headers: dict[str, str] = {}
    body: list[bytes] = []
    try:
        while True:
            event: Any = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Outcome(status, sorted((k, v) for k, v in headers.items() if k not in FRAMING), b"".join(body))
            else:  # NEED_DATA at EOF, ConnectionClosed before the end, PAUSED
                return None
    except h11.RemoteProtocolError:
        return None


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([200, 201, 204, 400, 404, 429, 500, 503]))
    interim = draw(st.lists(st.sampled_from([100, 103]), max_size=2))
    names = draw(st.lists(TOKEN.filter(lambda n: n.lower() not in FRAMING), max_size=8))
    headers = [(n, draw(VALUE)) for n in names]
    body = draw(st.binary(max_size=300)) if status != 204 else b""
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    head = b"".join(b"HTTP/1.1 %d Info\r\n\r\n" % code for code in interim)
    head += b"HTTP/1.1 %d Whatever\r\n" % status
    head += b"".join(f"{n}: {v}\r\n".encode() for n, v in headers)
    if status == 204:
        return head + b"\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 64), max_size=6))
        out, pos = [], 0
        for size in sizes:
            piece = body[pos : pos + size]
            if piece:
                out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            pos += size
        if pos < len(body):
            out.append(b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:]))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(out) + b"0\r\n\r\n"
    return head + b"Connection: close\r\n\r\n" + body


@FUZZ
@given(responses(), st.lists(st.integers(0, 10_000), max_size=6))
def test_well_formed_responses_read_the_same(data: bytes, cuts: list[int]) -> None:
    expected = h11_parse(data)
    assert expected is not None, data
    assert lean_parse(split_at(data, cuts)) == expected


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(responses()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(JUNK))
        elif data:
            del data[at]
    return bytes(data)


@FUZZ
@given(mangled(), st.lists(st.integers(0, 10_000), max_size=4))
def test_mangled_responses_are_never_read_more_laxly_than_h11(data: bytes, cuts: list[int]) -> None:
    ours = lean_parse(split_at(data, cuts))
    if ours is not None:
        # llhttp skips empty lines before a status line (RFC 9112 §2.2 allows it): harmless.
        theirs = h11_parse(_EMPTY_LINES.sub(b"", data))
        assert theirs is not None, f"the lean client accepted what h11 refuses: {data!r}"
        assert ours == theirs
