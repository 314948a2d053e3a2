"""Differential fuzzing: the plugin's event-stream decoder against botocore's `EventStreamBuffer`.

Same bytes, split at arbitrary points, valid frames of every header type or frames with
bytes flipped, inserted or cut: both must yield the same messages, and where botocore
refuses the stream the decoder must refuse it too (never yield a message botocore would not).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from botocore.eventstream import EventStreamBuffer, ParserError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relaygate_bedrock.eventstream import EventStreamDecoder, EventStreamError

from proxy.testing import split_at

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAME = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)


@st.composite
def header(draw: st.DrawFn, name_text: str) -> bytes:
    name = name_text.encode()
    kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    fixed = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}
    if kind in (0, 1):
        value = b""
    elif kind in fixed:
        bits = {">b": 7, ">h": 15, ">i": 31, ">q": 63}[fixed[kind]]
        value = struct.pack(fixed[kind], draw(st.integers(-(1 << bits), (1 << bits) - 1)))
    elif kind == 9:
        value = draw(st.binary(min_size=16, max_size=16))
    else:
        data = draw(st.text(max_size=30)).encode() if kind == 7 else draw(st.binary(max_size=30))
        value = struct.pack(">H", len(data)) + data
    return bytes([len(name)]) + name + bytes([kind]) + value


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(NAME, max_size=5, unique=True))
    headers = b"".join(draw(header(name)) for name in names)
    payload = draw(st.binary(max_size=200))
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _normal(headers: dict[str, Any]) -> dict[str, Any]:
    # botocore hands a UUID header over as its 16 bytes; the decoder as an int (it reads none).
    return {k: int.from_bytes(v, "big") if isinstance(v, bytes) and len(v) == 16 else v for k, v in headers.items()}


def botocore_messages(data: bytes) -> tuple[list[tuple[dict[str, Any], bytes]], bool]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    out = []
    try:
        for message in buffer:
            out.append((message.headers, message.payload))
    except ParserError:
        return out, True
    return out, False


def ours(pieces: list[bytes]) -> tuple[list[tuple[dict[str, Any], bytes]], bool]:
    decoder = EventStreamDecoder()
    out = []
    try:
        for piece in pieces:
            out.extend(decoder.feed(piece))
    except EventStreamError:
        return out, True
    return out, False


@FUZZ
@given(st.lists(frame(), min_size=1, max_size=4), st.lists(st.integers(0, 5000), max_size=8))
def test_valid_streams_decode_the_same(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    expected, failed = botocore_messages(data)
    assert not failed
    got, error = ours(split_at(data, cuts))
    assert not error
    assert [(_normal(h), p) for h, p in got] == [(_normal(h), p) for h, p in expected]


@FUZZ
@given(st.lists(frame(), min_size=1, max_size=3), st.data())
def test_corrupt_streams_never_yield_what_botocore_refuses(frames: list[bytes], data: st.DataObject) -> None:
    raw = bytearray(b"".join(frames))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif len(raw) > 1:
            del raw[at]
    stream = bytes(raw)
    expected, refused = botocore_messages(stream)
    got, error = ours(split_at(stream, data.draw(st.lists(st.integers(0, 5000), max_size=4))))
    # Every message the decoder yields, botocore yields too, in order.
    assert [(_normal(h), p) for h, p in got] == [(_normal(h), p) for h, p in expected[: len(got)]]
    if refused:
        assert error or len(got) == len(expected), "botocore refused a stream the decoder read on"
