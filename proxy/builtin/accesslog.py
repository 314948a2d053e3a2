"""One JSON line per finished request on the `relaygate.access` logger.

Only names are logged (client key name, provider name), never a key, token or body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import IO

import orjson

from ..hookspecs import hookimpl
from ..types import Call

log = logging.getLogger("relaygate.access")


@hookimpl
def log_request(call: Call) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    now = time.perf_counter()
    target = call.target
    usage = call.usage
    record = {
        "ts": round(time.time(), 3),
        "request_id": call.request_id,
        "client": call.client.name if call.client else None,
        "method": call.method,
        "route": call.path if call.path[:1] == "/" else "/v1/" + call.path,
        "model": call.model,
        "provider": target.provider_name if target else None,
        "upstream_model": target.model if target else None,
        "stream": call.stream,
        "status": call.status,
        "latency_ms": round((now - call.started) * 1e3, 3),
        "ttfb_ms": round((call.first_byte - call.started) * 1e3, 3) if call.first_byte else None,
        "tokens_in": usage.prompt_tokens if usage else None,
        "tokens_out": usage.completion_tokens if usage else None,
        "tokens_cached": usage.cached_tokens if usage else None,
        "cost_usd": call.cost_usd,
        "fallbacks": call.fallbacks,
        "error": call.error,
        "error_type": call.error_type,  # the closed set of proxy.errors, as the metrics count it
    }
    line = orjson.dumps(record)
    handlers = log.handlers
    if len(handlers) == 1 and type(handlers[0]) is LineWriter and not log.filters:
        # The CLI's set-up: skipping LogRecord, filters and the handler lock costs a
        # third of what `logging` would, on every request.
        handlers[0].write_line(line)
    else:
        # makeRecord + handle skips logging's caller lookup (a stack walk per record).
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line.decode(), (), None))


class LineWriter(logging.Handler):
    """Writes each record's message as one line, flushing once per event-loop turn.

    A flush (a write syscall) per access record would cost more than the record;
    lines written in the same loop iteration leave together, within milliseconds.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self.stream = stream
        self._flush_scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(record.getMessage().encode())
        except Exception:
            self.handleError(record)

    def write_line(self, line: bytes) -> None:
        """Write one line (without its newline) and schedule the flush."""
        self.stream.write(line + b"\n")
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

