"""The attempt loop: limits, strategy, breaker, retries and fallbacks of one request.

Everything here happens before a byte reaches the client: the first chunk of a stream is
read before the response headers are sent (which costs no latency; the client is waiting
for it anyway), so a failure up to then may still be retried on the same target or moved
to the next one. After that the answer is the client's, whatever happens.

Order of decisions: the route's `strategy` orders the targets (the others stay
fallbacks); targets whose breaker is open are skipped; admission reserves the key, route
and first provider with room in one atomic call; each target is tried up to its
`retries.attempts` times; then the next target (its provider reserved anew).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import CLIENT_DISCONNECTED, GatewayError, InvalidRequest, UpstreamUnavailable, is_retryable
from ..types import Attempt, Call, Reply, Target
from .resilience import retry_delay

if TYPE_CHECKING:
    from ..limits.admission import Admission
    from .runtime import Runtime

log = logging.getLogger("relaygate")
#: One upstream attempt: `provider.send` itself, or what wraps it (a translation, a span).
Send = Callable[[Call, Target], Awaitable[Reply]]


async def send_to_provider(call: Call, target: Target) -> Reply:
    """The plain attempt: the target's provider sends the call as it is."""
    return await target.provider.send(call, target)


class _TargetFailed(Exception):
    """Every try on one target failed with a retryable error (or its breaker opened meanwhile)."""

    def __init__(self, error: GatewayError | None) -> None:
        self.error = error


async def attempt(runtime: Runtime, call: Call, send: Send = send_to_provider) -> tuple[Reply, bytes | None]:
    """Send `call` to the first target that answers; the reply and a stream's first chunk."""
    candidates = [t for t in call.targets if t.provider.serves(call.endpoint)]
    if not candidates:
        raise InvalidRequest(
            f"The model '{call.model}' does not support /v1/{call.path}.",
            param="model",
            code="unsupported_endpoint",
        )
    health = runtime.health
    queue = health.order(candidates[0].route, candidates)
    limiter = runtime.limiter
    adm = limiter.prepare(call, candidates[0].route) if limiter is not None else None
    call.admission = adm
    first = True
    last: GatewayError | None = None
    while queue:
        usable = [t for t in queue if health.available(t.provider_name)]
        for t in queue:
            if t not in usable:
                call.fallbacks.append(f"{t.provider_name}: skipped, circuit open")
        if not usable:
            break
        index = 0
        if adm is not None and limiter is not None:
            index = await limiter.admit(call, adm, usable, first)
            for t in usable[:index]:
                call.fallbacks.append(f"{t.provider_name}: skipped, provider limit reached")
        first = False
        target, queue = usable[index], usable[index + 1 :]
        try:
            reply, chunk = await _try_target(runtime, call, target, send, adm)
        except _TargetFailed as failed:
            last = failed.error or last
            if adm is not None and limiter is not None:
                limiter.end_provider(adm)
            if queue:
                reason = f"HTTP {last.status} {last.code or last.type}" if last is not None else "circuit open"
                call.fallbacks.append(f"{target.provider_name}: {reason}")
                log.warning("request %s: provider %s failed (%s); falling back to %s", call.request_id,
                            target.provider_name, reason, queue[0].provider_name)  # fmt: skip
            continue
        if adm is not None:
            adm.served = True
            if adm.headers:  # the admission's own dict: the reply may keep it
                reply.headers = {**reply.headers, **adm.headers} if reply.headers else adm.headers
        return reply, chunk
    if last is not None:
        raise last
    raise UpstreamUnavailable(
        f"Every provider for the model '{call.model}' is failing (circuit open); try again shortly.",
        code="circuit_open",
    )


async def _try_target(
    runtime: Runtime, call: Call, target: Target, send: Send, adm: Admission | None
) -> tuple[Reply, bytes | None]:
    """Up to `retries.attempts` tries on one target; raises `_TargetFailed` to move on."""
    name = target.provider_name
    policy = runtime.config.provider_policies.get(name)
    retries = policy.retries if policy is not None else None
    tries = retries.attempts if retries is not None else 1
    health = runtime.health.get(name)
    breaker = health.breaker
    error: GatewayError | None = None
    for retry in range(tries):
        if breaker is not None and not breaker.acquire():
            raise _TargetFailed(error)  # opened by the last failure (or another request probes)
        call.target = target
        attempt = Attempt(name, target.model, retry)
        call.attempts.append(attempt)
        sent = False
        try:
            await runtime.chain.inject_guardrails(call, target)
            sent = True
            health.inflight += 1
            reply = await send(call, target)
            chunk = await _first_chunk(reply) if reply.stream is not None else None
        except GatewayError as exc:
            attempt.ended = time.perf_counter()
            attempt.status = exc.status
            attempt.error_type = exc.error_type
            if sent:
                health.inflight -= 1
            if not is_retryable(exc):
                if breaker is not None:
                    breaker.succeeded() if sent else breaker.abandon()  # the upstream answered: it is alive
                raise
            if breaker is not None:
                breaker.failed() if sent else breaker.abandon()
            error = exc
            if retry + 1 < tries and retries is not None:
                delay = retry_delay(retries, retry + 1, exc.headers)
                if delay is not None:
                    log.info("request %s: provider %s failed (HTTP %s); retry %d of %d in %.2f s", call.request_id,
                             name, exc.status, retry + 1, tries - 1, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    continue
            raise _TargetFailed(error) from None
        except BaseException as exc:
            attempt.ended = time.perf_counter()
            attempt.error_type = CLIENT_DISCONNECTED if isinstance(exc, asyncio.CancelledError) else "gateway_internal"
            if sent:
                health.inflight -= 1
            if breaker is not None:
                breaker.abandon()
            raise
        attempt.ended = time.perf_counter()
        attempt.status = reply.status
        if breaker is not None:
            breaker.succeeded()
        return reply, chunk
    raise _TargetFailed(error)


async def _first_chunk(reply: Reply) -> bytes:
    assert reply.stream is not None
    try:
        return await anext(reply.stream)
    except StopAsyncIteration:
        return b""
    except BaseException:
        await reply.stream.aclose()
        raise


async def finish(runtime: Runtime, call: Call) -> None:
    """The request has ended (stream included, client gone included): cost, settlement, in-flight."""
    attempts = call.attempts
    if attempts and attempts[-1].error_type is None and attempts[-1].ended is not None:
        runtime.health.get(attempts[-1].provider).inflight -= 1  # the answer that was served has ended
    target = call.target
    route = target.route if target is not None else None
    price = route.price if route is not None else None
    usage = call.usage
    if price is not None and usage is not None:
        call.cost_usd = round(price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens), 9)
    adm = call.admission
    limiter = runtime.limiter
    if adm is not None and limiter is not None:
        limiter.finish(call, adm, price)  # applied or queued now; the handler does not wait for Redis
