"""One JSON line per finished request on the `relaygate.access` logger.

Only names are logged (client key name, provider name), never a key, token or body.
"""

from __future__ import annotations

import logging
import time

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
        "route": "/v1/" + call.path,
        "model": call.model,
        "provider": target.provider_name if target else None,
        "upstream_model": target.model if target else None,
        "stream": call.stream,
        "status": call.status,
        "latency_ms": round((now - call.started) * 1e3, 3),
        "ttfb_ms": round((call.first_byte - call.started) * 1e3, 3) if call.first_byte else None,
        "tokens_in": usage.prompt_tokens if usage else None,
        "tokens_out": usage.completion_tokens if usage else None,
        "fallbacks": call.fallbacks,
        "error": call.error,
    }
    # makeRecord + handle skips logging's caller lookup (a stack walk per record).
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, orjson.dumps(record).decode(), (), None))
