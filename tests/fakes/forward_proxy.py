"""An egress proxy on loopback: `CONNECT` tunnels and absolute-form HTTP requests.

Records each request line it was asked (`seen`), so a test knows the gateway used it.
Independent of `proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from yarl import URL

from .raw_upstream import RawUpstream


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


class ForwardProxy(RawUpstream):
    def __init__(self) -> None:
        super().__init__(self._handle)
        self.seen: list[str] = []

    async def _handle(self, _: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        self.seen.append(line)
        method, target, _version = line.split(" ")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # absolute form: forward the bytes as they are (a test proxy, one request)
            url = URL(target)
            assert url.host is not None and url.port is not None
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
