"""Per request: which limits apply, one atomic admission, settlement at the end.

`Limiter` is built once per runtime from the config; the counters behind it belong to
the store (`state`), so a reload keeps every window and budget. A request costs one
counters call to admit (its key, its route and the first target's provider at once) and
one to settle; a fallback to another target with a provider limit costs one more each.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING

from ..errors import GatewayError, LimitExceeded, UpstreamCapacityExceeded
from ..state import RedisStore, StateUnavailable, Store
from .config import Budget, Limits, Price
from .estimate import Periods, input_tokens, output_cap
from .redis import RedisCounters
from .windows import NANO, Counters, MemoryCounters, ScopeCheck, ScopeEnd, Verdict, WindowInfo

if TYPE_CHECKING:
    from ..config.load import Config, Route
    from ..types import Call, Target

log = logging.getLogger("relaygate.limits")
SCOPES = ("key", "route", "provider")


class StateUnavailableError(GatewayError):
    """`state.on_error: deny` while the shared store cannot be reached."""

    status = 503
    type = "server_error"
    default_code = "state_unavailable"
    error_type = "gateway_internal"


def counters_for(store: Store) -> Counters:
    """The store's counters, made once and kept with the store (across reloads)."""
    if isinstance(store, RedisStore):
        return store.attachment("limits", lambda s: RedisCounters(store))
    return store.attachment("limits", lambda s: MemoryCounters())


@dataclass(slots=True, eq=False)
class Admission:
    """What one request holds: its reservation in each scope, and how to end it."""

    rid: str
    required: list[ScopeCheck]  # key and route scopes that have limits
    scopes: list[str]  # "key" | "route" per required entry
    tokens: int  # the estimate reserved
    cost: int  # nano-USD estimate (budget)
    budget: Budget | None = None
    reserved: bool = False  # False: nothing held (not admitted yet, or the store was down under `allow`)
    served: bool = False  # an answer started (settle, never release)
    provider: ScopeCheck | None = None  # the current target's provider reservation
    provider_rid: str = ""
    attempts: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # the key's x-ratelimit-* for the answer


class Limiter:
    """The config's limits over the store's counters."""

    def __init__(self, config: Config, store: Store) -> None:
        self.store = store
        self.counters = counters_for(store)
        self.keys: dict[str, tuple[Limits | None, Budget | None]] = {
            k.name: (k.limits, k.budget) for k in config.clients or () if k.limits or k.budget
        }
        self.providers: dict[str, Limits] = {
            name: p.limits for name, p in config.provider_policies.items() if p.limits
        }
        self.periods = Periods()
        self._ids = count()
        self._prefix = os.urandom(6).hex()

    # -------------------------------------------------------------- admission

    def prepare(self, call: Call, route: Route | None) -> Admission | None:
        """The scopes of this request (None when no limit applies to it)."""
        key_rules = self.keys.get(call.client.name) if call.client is not None else None
        route_limits = route.limits if route is not None else None
        if key_rules is None and route_limits is None and not self.providers:
            return None
        key_limits, budget = key_rules or (None, None)
        tokens = cost = 0
        if (key_limits and key_limits.tpm) or (route_limits and route_limits.tpm) or budget or self.providers:
            cap = output_cap(call.body)
            if cap is None:
                cap = route.default_max_tokens if route is not None and route.default_max_tokens else 0
            inputs = input_tokens(call.body, len(call.raw_body))
            tokens = inputs + cap
            price = route.price if route is not None else None
            if budget and price is not None:
                cost = math.ceil(price.cost(inputs, cap) * NANO)
        required: list[ScopeCheck] = []
        scopes: list[str] = []
        if key_rules is not None and call.client is not None:
            check = _check(f"k:{call.client.name}", key_limits, tokens)
            if budget is not None:
                pid, end = self.periods.current(budget.period)
                check.budget = max(1, round(budget.usd * NANO))
                check.spent_key = pid
                check.cost = cost
                check.period_left_ms = 0 if end is None else max(1, int((end - time.time()) * 1000))
            required.append(check)
            scopes.append("key")
        if route_limits is not None and route is not None:
            required.append(_check(f"r:{route.model}", route_limits, tokens))
            scopes.append("route")
        rid = f"{self._prefix}:{next(self._ids)}"
        return Admission(rid, required, scopes, tokens, cost, budget)

    def _candidates(self, adm: Admission, targets: Sequence[Target]) -> list[ScopeCheck]:
        """Provider scopes of `targets` up to the first without a limit (prefix "": always room)."""
        out = []
        for t in targets:
            limits = self.providers.get(t.provider_name)
            out.append(ScopeCheck("") if limits is None else _check(f"p:{t.provider_name}", limits, adm.tokens))
            if limits is None:
                break
        return out

    async def admit(self, call: Call, adm: Admission, targets: Sequence[Target], first: bool) -> int:
        """Reserve for the next target: the key and route scopes too when `first`.

        Returns the index in `targets` of the target to try (earlier ones had no room);
        raises `LimitExceeded` / `UpstreamCapacityExceeded` (every limit that said no is
        in `call.rejections`), or `StateUnavailableError` under `on_error: deny`.
        """
        required = adm.required if first else []
        candidates = self._candidates(adm, targets)
        if not candidates[0].prefix:  # the first target's provider has no limit
            if not required:
                return 0
            candidates = []
        if first:
            rid = adm.rid  # one id across the key, route and first provider
        else:
            adm.attempts += 1
            rid = f"{adm.rid}/{adm.attempts}"
        try:
            verdict = await self.counters.admit(rid, required, candidates)
        except StateUnavailable:
            if self.store.on_error == "deny":
                raise StateUnavailableError(
                    "The gateway cannot reach its shared state to check rate limits; try again shortly."
                ) from None
            return 0  # `allow`: served without limits while the store is down (logged once, counted)
        for index, kind, _ in verdict.rejections:
            call.rejections.append((adm.scopes[index] if index < len(required) else "provider", kind))
        if verdict.status == 1:
            raise self._refusal(adm, verdict)
        if verdict.status == 2:
            waits = [ms for i, _, ms in verdict.rejections if i >= len(required)]
            raise UpstreamCapacityExceeded(
                f"Every provider for the model '{call.model}' is at its configured capacity; try again shortly.",
                headers={"retry-after": _seconds(min(waits, default=1000))},
            )
        if required:
            adm.reserved = True
            if adm.scopes[0] == "key" and call.client is not None:
                adm.headers = _headers(self.keys[call.client.name][0], verdict.info[0])
        if not candidates:
            return 0
        chosen = candidates[verdict.chosen]
        if chosen.prefix:
            adm.provider, adm.provider_rid = chosen, rid
        return verdict.chosen

    def _refusal(self, adm: Admission, verdict: Verdict) -> LimitExceeded:
        """The 429 for the most lasting refusal among the required scopes."""
        index, kind, wait = max(verdict.rejections, key=lambda r: (r[1] == "budget", r[2]))
        scope = adm.scopes[index]
        check = adm.required[index]
        what = "key" if scope == "key" else "model"
        name = check.prefix[2:]
        headers: dict[str, str] = {}
        if kind == "budget":
            assert adm.budget is not None
            period = "in total" if adm.budget.period == "total" else f"this {adm.budget.period} (UTC)"
            message = (f"The key '{name}' has used its budget of ${adm.budget.usd:g} {period}. "
                       "You exceeded your current quota.")  # fmt: skip
            if wait > 0:
                headers["retry-after"] = _seconds(wait)
        elif kind == "concurrency":
            message = f"Too many requests in flight for the {what} '{name}': the limit is {check.concurrency} at once."
            headers["retry-after"] = "1"
        else:
            info = verdict.info[index]
            limits = Limits(check.rpm or None, check.tpm or None)
            headers.update(_headers(limits, info))
            if kind == "requests":
                message = f"Rate limit reached for requests on the {what} '{name}': limit {check.rpm} per minute."
            elif check.tokens > check.tpm:
                message = (f"Request too large for the {what} '{name}': it needs about {check.tokens} tokens and "
                           f"the limit is {check.tpm} per minute.")  # fmt: skip
            else:
                message = (f"Rate limit reached for tokens on the {what} '{name}': limit {check.tpm} per minute, "
                           f"requested {check.tokens}.")  # fmt: skip
            message += f" Please try again in {duration(wait)}."
            headers["retry-after"] = _seconds(wait)
        return LimitExceeded(message, kind=kind, scope=scope, headers=headers)  # type: ignore[arg-type]

    # -------------------------------------------------------------- the end

    def end_provider(self, adm: Admission) -> None:
        """A target failed: its provider keeps the request counted, with no tokens."""
        check, adm.provider = adm.provider, None
        if check is not None:
            end = ScopeEnd(check.prefix, False, tpm=bool(check.tpm), concurrency=bool(check.concurrency),
                           estimate=check.tokens)  # fmt: skip
            self.counters.settle_soon([(adm.provider_rid, [end])])

    def finish(self, call: Call, adm: Admission, price: Price | None) -> None:
        """Settle to the real usage (or the estimate, when it is unknown), or release on failure.

        Nothing waits for it: the settlement is applied, or queued for this loop turn's batch."""
        usage = call.usage
        ends: list[ScopeEnd] = []
        settle = adm.served or usage is not None
        tokens = usage.total_tokens if usage is not None else adm.tokens
        cost = 0
        if adm.budget is not None and settle:
            if usage is not None and price is not None:
                cost = round(price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) * NANO)
            elif usage is None:
                cost = adm.cost
        if adm.reserved:
            for check in adm.required:
                end = ScopeEnd(check.prefix, not settle, rpm=bool(check.rpm), tpm=bool(check.tpm),
                               concurrency=bool(check.concurrency), budget=bool(check.budget), tokens=tokens,
                               estimate=check.tokens, spent_key=check.spent_key, cost=cost)  # fmt: skip
                if check.budget and settle:
                    end.spent_key, end.spent_ttl_ms = self._spent_period(adm)
                ends.append(end)
        provider, adm.provider = adm.provider, None
        items: list[tuple[str, list[ScopeEnd]]] = []
        if provider is not None:
            provider_end = ScopeEnd(provider.prefix, False, tpm=bool(provider.tpm),
                                    concurrency=bool(provider.concurrency), tokens=tokens if settle else 0,
                                    estimate=provider.tokens)  # fmt: skip
            if adm.provider_rid == adm.rid:
                ends.append(provider_end)
            else:
                items.append((adm.provider_rid, [provider_end]))
        adm.reserved = False
        if ends:
            items.append((adm.rid, ends))
        if items:
            self.counters.settle_soon(items)

    def _spent_period(self, adm: Admission) -> tuple[str, int]:
        """The period a settled cost is charged to (the one current now) and how long to keep it."""
        assert adm.budget is not None
        pid, end = self.periods.current(adm.budget.period)
        return pid, 0 if end is None else int((end - time.time() + 86400) * 1000)

def _check(prefix: str, limits: Limits | None, tokens: int) -> ScopeCheck:
    if limits is None:
        return ScopeCheck(prefix)
    return ScopeCheck(prefix, limits.rpm or 0, limits.tpm or 0, limits.concurrency or 0, tokens if limits.tpm else 0)


# ---------------------------------------------------------------- headers


def duration(ms: int) -> str:
    """OpenAI's (Go's) duration format: `120ms`, `1s`, `8.64s`, `6m0s`, `1h2m3s`."""
    ms = max(int(ms), 0)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    if hours:
        return f"{hours}h{minutes}m{rest / 1000:g}s"
    return f"{minutes}m{rest / 1000:g}s"


def _seconds(ms: int) -> str:
    """`retry-after`: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(ms / 1000)))


def _headers(limits: Limits | None, info: WindowInfo) -> dict[str, str]:
    headers: dict[str, str] = {}
    if limits is None:
        return headers
    if limits.rpm:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(info.requests_remaining, 0))
        headers["x-ratelimit-reset-requests"] = duration(info.requests_reset_ms)
    if limits.tpm:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(info.tokens_remaining, 0))
        headers["x-ratelimit-reset-tokens"] = duration(info.tokens_reset_ms)
    return headers
