"""Server-sent-event framing helpers shared by pass-through and translating providers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

DONE = b"data: [DONE]\n\n"


def event(payload: object) -> bytes:
    """One `data:` event carrying `payload` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def last_boundary(buf: bytes) -> int:
    """Index just past the last complete event in `buf`, or 0 if none is complete.

    SSE allows LF, CRLF and CR line endings; OpenAI-compatible servers use LF, but a
    proxy in between may not.
    """
    end = buf.rfind(b"\n\n")
    if end >= 0:
        end += 2
    crlf = buf.rfind(b"\r\n\r\n")
    if crlf >= 0 and crlf + 4 > end:
        end = crlf + 4
    return max(end, 0)


def split_events(block: bytes) -> list[bytes]:
    """Split a block of complete events into events (each keeps its terminator)."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    parts = block.split(b"\n\n")
    return [p + b"\n\n" for p in parts if p]


def event_data(ev: bytes) -> bytes | None:
    """The joined `data:` lines of one event, or None if it has none."""
    lines = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in ev.split(b"\n")]
    data = [x for x in lines if x is not None]
    return b"\n".join(data) if data else None


async def complete_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Regroup arbitrary network reads into blocks that end on an event boundary.

    A partial event is useless to an SSE client, so holding it back adds no latency
    that matters, and it lets filters work on whole events.
    """
    buf = b""
    async for data in chunks:
        buf = buf + data if buf else data
        end = last_boundary(buf)
        if end:
            block, buf = buf[:end], buf[end:]
            yield block
    if buf.strip():
        yield buf if buf.endswith(b"\n\n") else buf + b"\n\n"
