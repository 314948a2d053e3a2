"""A lean HTTP/1.1 load client: raw asyncio protocol, keep-alive, one connection per worker.

It runs in the benchmark's own process on uvloop and spends ~25-40 µs of CPU per
request, so on two cores it leaves the proxy under test most of a core. Per request it
records the full latency and the time to first body byte (for a chunked SSE response:
the first non-empty chunk, i.e. the first event; for a Content-Length response: the
first byte of the answer).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast


class Conn(asyncio.Protocol):
    """One keep-alive connection that carries one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[int] | None = None
        self.first: asyncio.Future[None] | None = None
        self.t_first = 0.0
        self.status = 0
        self.mode = 0  # 0 head, 1 content-length body, 2 chunked body
        self.remaining = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection lost mid-response"))
        if self.first is not None and not self.first.done():
            self.first.set_exception(ConnectionError("connection lost before the first byte"))

    def request(self, raw: bytes) -> asyncio.Future[int]:
        """Send one request; the future resolves to the status once the answer is complete."""
        assert self.transport is not None, "connection closed"
        loop = asyncio.get_running_loop()
        self.fut = loop.create_future()
        self.first = loop.create_future()
        self.t_first = 0.0
        self.mode = 0
        self.transport.write(raw)
        return self.fut

    def _mark_first(self) -> None:
        if not self.t_first:
            self.t_first = time.perf_counter()
            if self.first is not None and not self.first.done():
                self.first.set_result(None)

    def _finish(self) -> None:
        self.mode = 0
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(self.status)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            if self.mode == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    self.remaining = int(head[at + 17 : stop if stop >= 0 else None])
                    self.mode = 1
                    self._mark_first()
                    if self.remaining == 0:
                        self._finish()
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.mode = 2
                else:
                    raise ValueError("the load client needs Content-Length or chunked responses")
            elif self.mode == 1:
                take = min(self.remaining, len(buf))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self._finish()
            else:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                need = line_end + 2 + size + 2
                if len(buf) < need:
                    return
                del buf[:need]
                if size:
                    self._mark_first()
                else:  # no trailers: the zero chunk ends the body
                    self._finish()


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(host: str, port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Conn, host, port)
    return proto


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(
    host: str, port: int, raw: bytes, *, concurrency: int, duration: float | None, requests: int | None
) -> Result:
    """Keep `concurrency` requests in flight until `duration` passes or `requests` are done."""
    conns = [await connect(host, port) for _ in range(concurrency)]
    result = Result()
    deadline = time.perf_counter() + duration if duration else float("inf")
    budget = [requests if requests else 1 << 62]

    async def worker(conn: Conn) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                status = await conn.request(raw)
            except ConnectionError:
                result.errors += 1
                return
            t1 = time.perf_counter()
            if status != 200:
                result.errors += 1
                continue
            result.latencies.append(t1 - t0)
            result.ttfbs.append(conn.t_first - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    result.elapsed = time.perf_counter() - start
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return result


async def open_streams(host: str, port: int, raw: bytes, n: int, timeout: float) -> tuple[list[Conn], int]:
    """Open `n` connections, start a stream on each, wait for every first event.

    Returns the connections (still streaming) and how many reached their first event.
    """
    conns: list[Conn] = []
    for i in range(0, n, 100):  # connect in batches so the accept backlog never overflows
        conns += await asyncio.gather(*(connect(host, port) for _ in range(min(100, n - i))))
    firsts = []
    for c in conns:
        c.request(raw).add_done_callback(lambda f: f.exception())  # finishes later or on close
        assert c.first is not None
        firsts.append(c.first)
    done, _ = await asyncio.wait(firsts, timeout=timeout)
    ok = sum(1 for f in done if f.exception() is None)
    return conns, ok
