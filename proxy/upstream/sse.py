"""Server-sent-event framing helpers shared by pass-through and translating providers."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from ..errors import UpstreamError

DONE = b"data: [DONE]\n\n"
#: The largest server-sent event relayed (a streamed image can take a few MiB).
DEFAULT_MAX_EVENT = 16 * 1024 * 1024


class EventTooLarge(UpstreamError):
    """The upstream sent an event (or a line that never ended) over the cap."""

    default_code = "upstream_event_too_large"


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


async def complete_events(
    chunks: AsyncIterator[bytes], max_event: int = DEFAULT_MAX_EVENT, source: str = "the upstream"
) -> AsyncGenerator[bytes, None]:
    """Regroup arbitrary network reads into blocks that end on an event boundary.

    A partial event is useless to an SSE client, so holding it back adds no latency
    that matters, and it lets filters work on whole events. An event that grows past
    `max_event` bytes ends the stream with an error (a line that never ends must not
    hold the gateway's memory); pieces are collected in a list, so a long event costs
    linear time, not quadratic.
    """
    pending: list[bytes] = []
    size = 0
    async for data in chunks:
        if pending:
            # Only the seam between the old tail and the new data can hold a new boundary
            # that the old data did not: look there and in the new data.
            tail = pending[-1][-3:]
            end = last_boundary(tail + data)
            end = end - len(tail) if end else 0
            if end <= 0:
                pending.append(data)
                size += len(data)
                if size > max_event:
                    raise EventTooLarge(f"{source} sent a server-sent event over {max_event} bytes")
                continue
            pending.append(data[:end])
            yield b"".join(pending)
            data = data[end:]
            pending = []
            size = 0
            if data:
                pending.append(data)
                size = len(data)
            continue
        end = last_boundary(data)
        if end:
            yield data if end == len(data) else data[:end]
            data = data[end:]
        if data:
            pending.append(data)
            size = len(data)
        if size > max_event:
            raise EventTooLarge(f"{source} sent a server-sent event over {max_event} bytes")
    buf = b"".join(pending)
    if buf.strip():
        yield buf if buf.endswith(b"\n\n") else buf + b"\n\n"
