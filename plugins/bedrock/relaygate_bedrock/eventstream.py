"""Incremental decoder for AWS's binary event stream (`application/vnd.amazon.eventstream`).

Frame layout: total length, headers length and a CRC32 of those 8 bytes (the prelude),
then the headers, the payload, and a CRC32 of everything before it. Network reads split
and join frames arbitrarily, so bytes are buffered until a whole frame is there.

It does what `botocore.eventstream.EventStreamBuffer` does, checked against it in the
tests, at a fraction of the cost: a streamed event has a budget of a few microseconds,
and only string headers (`:event-type`, `:message-type`, ...) matter here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from zlib import crc32

_PRELUDE = struct.Struct(">III")
_U16 = struct.Struct(">H")
_PRELUDE_LEN = 12
MAX_MESSAGE = 16 * 1024 * 1024
# Sizes of the fixed-width header value types (0..9), -1 = length-prefixed, 0 = none.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 6: -1, 7: -1, 8: 8, 9: 16}

Headers = dict[str, object]


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad length or checksum)."""


def parse_headers(data: bytes) -> Headers:
    headers: Headers = {}
    pos, end = 0, len(data)
    while pos < end:
        name_len = data[pos]
        name = data[pos + 1 : pos + 1 + name_len].decode()
        if name in headers:  # as botocore: a repeated header makes the frame invalid
            raise EventStreamError(f"event stream header {name!r} is repeated")
        pos += 1 + name_len
        kind = data[pos]
        pos += 1
        size = _FIXED.get(kind)
        if size is None:
            raise EventStreamError(f"unknown header value type {kind}")
        if kind == 7:
            (length,) = _U16.unpack_from(data, pos)
            headers[name] = data[pos + 2 : pos + 2 + length].decode()
            pos += 2 + length
        elif kind == 6:
            (length,) = _U16.unpack_from(data, pos)
            headers[name] = data[pos + 2 : pos + 2 + length]
            pos += 2 + length
        elif kind in (0, 1):
            headers[name] = kind == 0
        else:
            headers[name] = int.from_bytes(data[pos : pos + size], "big", signed=kind != 9)
            pos += size
    return headers


class EventStreamDecoder:
    """Feed it network reads; it yields `(headers, payload)` for every complete frame."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> Iterator[tuple[Headers, bytes]]:
        buf = self._buf + data if self._buf else data
        pos = 0
        size = len(buf)
        try:
            while size - pos >= _PRELUDE_LEN:
                total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, pos)
                if crc32(buf[pos : pos + 8]) != prelude_crc:
                    raise EventStreamError("event stream prelude checksum mismatch")
                if total > MAX_MESSAGE or total < _PRELUDE_LEN + 4 + headers_len:
                    raise EventStreamError(f"event stream frame length {total} is invalid")
                if size - pos < total:
                    break
                end = pos + total
                (message_crc,) = struct.unpack_from(">I", buf, end - 4)
                if crc32(buf[pos : end - 4]) != message_crc:
                    raise EventStreamError("event stream message checksum mismatch")
                hstart = pos + _PRELUDE_LEN
                headers = parse_headers(buf[hstart : hstart + headers_len])
                payload = buf[hstart + headers_len : end - 4]
                pos = end
                yield headers, payload
        finally:
            self._buf = buf[pos:]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at the end = a truncated stream)."""
        return len(self._buf)


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame with string headers (what Bedrock sends); used by fakes and benchmarks."""
    hbytes = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + _U16.pack(len(v.encode())) + v.encode() for k, v in headers.items()
    )
    total = _PRELUDE_LEN + len(hbytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hbytes))
    prelude += struct.pack(">I", crc32(prelude))
    body = prelude + hbytes + payload
    return body + struct.pack(">I", crc32(body))
