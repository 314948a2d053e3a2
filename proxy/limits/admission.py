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
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING

from multidict import istr

from ..errors import GatewayError, LimitExceeded, UpstreamCapacityExceeded
from ..state import RedisStore, StateUnavailable, Store
from .config import Budget, Limits, Price
from .estimate import Periods, input_tokens, output_cap
from .redis import RedisCounters
from .windows import NANO, Counters, MemoryCounters, ScopeCheck, ScopeEnd, Verdict

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
class _Rule:
    """One scope's fixed limits and the text every request's check, end and headers reuse:
    the key's, a route's and a provider's limits do not change within a config."""

    prefix: str  # "k:<key name>", "r:<route pattern>", "p:<provider name>"
    scope: str  # "key" | "route" | "provider"
    limits: Limits | None  # None: a key with a budget only
    budget: Budget | None = None
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    head: str = ""  # `ScopeCheck.wire`'s fixed fields
    rpm_text: str = ""
    tpm_text: str = ""
    alone: tuple[_Rule, ...] = ()  # (self,): the rules of a request with this scope only

    def __post_init__(self) -> None:
        limits = self.limits
        if limits is not None:
            self.rpm, self.tpm, self.concurrency = limits.rpm or 0, limits.tpm or 0, limits.concurrency or 0
        self.head = f"{self.prefix}\0{self.rpm}\0{self.tpm}\0{self.concurrency}\0"
        self.rpm_text, self.tpm_text = str(self.rpm), str(self.tpm)
        self.alone = (self,)

    def check(self, tokens: int) -> ScopeCheck:
        return ScopeCheck(self.prefix, self.rpm, self.tpm, self.concurrency, tokens if self.tpm else 0, head=self.head)


@dataclass(slots=True, eq=False)
class Admission:
    """What one request holds: its reservation in each scope, and how to end it."""

    rid: str
    required: list[ScopeCheck]  # key and route scopes that have limits
    rules: tuple[_Rule, ...]  # the rule of each required entry
    tokens: int  # the estimate reserved
    cost: int  # nano-USD estimate (budget)
    budget: Budget | None = None
    reserved: bool = False  # False: nothing held (not admitted yet, or the store was down under `allow`)
    served: bool = False  # an answer started (settle, never release)
    provider: ScopeCheck | None = None  # the current target's provider reservation
    provider_rid: str = ""
    attempts: int = 0
    headers: dict[str, str] | None = None  # the key's x-ratelimit-* for the answer

    @property
    def scopes(self) -> list[str]:
        """"key" | "route" per required entry."""
        return [rule.scope for rule in self.rules]


class Limiter:
    """The config's limits over the store's counters."""

    def __init__(self, config: Config, store: Store) -> None:
        self.store = store
        self.counters = counters_for(store)
        self.keys: dict[str, _Rule] = {
            k.name: _Rule(f"k:{k.name}", "key", k.limits, k.budget)
            for k in config.clients or ()
            if k.limits or k.budget
        }
        self.providers: dict[str, Limits] = {
            name: p.limits for name, p in config.provider_policies.items() if p.limits
        }
        self._routes: dict[str, _Rule] = {}
        self.periods = Periods()
        self._ids = count()
        self._prefix = os.urandom(6).hex() + ":"

    # -------------------------------------------------------------- admission

    def _route_rule(self, route: Route, limits: Limits) -> _Rule:
        rule = self._routes.get(route.model)
        if rule is None or rule.limits is not limits:
            rule = self._routes[route.model] = _Rule(f"r:{route.model}", "route", limits)
        return rule

    def prepare(self, call: Call, route: Route | None) -> Admission | None:
        """The scopes of this request (None when no limit applies to it)."""
        client = call.client
        key = self.keys.get(client.name) if client is not None else None
        route_limits = route.limits if route is not None else None
        if key is None and route_limits is None and not self.providers:
            return None
        budget = key.budget if key is not None else None
        tokens = cost = 0
        if (key is not None and (key.tpm or budget)) or (route_limits and route_limits.tpm) or self.providers:
            body = call.body
            cap = output_cap(body)
            if cap is None:
                cap = route.default_max_tokens if route is not None and route.default_max_tokens else 0
            inputs = input_tokens(body, len(call.raw_body))
            tokens = inputs + cap
            price = route.price if route is not None else None
            if budget and price is not None:
                cost = math.ceil(price.cost(inputs, cap) * NANO)
        required: list[ScopeCheck]
        rules: tuple[_Rule, ...]
        if key is not None:  # `key.check(tokens)`, inline
            check = ScopeCheck(key.prefix, key.rpm, key.tpm, key.concurrency, tokens if key.tpm else 0, 0, "", 0, 0,
                               key.head)  # fmt: skip
            if budget is not None:
                pid, end = self.periods.current(budget.period)
                check.budget = max(1, round(budget.usd * NANO))
                check.spent_key = pid
                check.cost = cost
                check.period_left_ms = 0 if end is None else max(1, int((end - time.time()) * 1000))
            required, rules = [check], key.alone
        else:
            required, rules = [], ()
        if route_limits is not None and route is not None:
            rule = self._route_rule(route, route_limits)
            required.append(rule.check(tokens))
            rules = (*rules, rule)
        return Admission(f"{self._prefix}{next(self._ids)}", required, rules, tokens, cost, budget)

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
        if first:
            required = adm.required
            rid = adm.rid  # one id across the key, route and first provider
        else:
            required = []
            adm.attempts += 1
            rid = f"{adm.rid}/{adm.attempts}"
        candidates: list[ScopeCheck] = []
        if self.providers:
            candidates = self._candidates(adm, targets)
            if not candidates[0].prefix:  # the first target's provider has no limit
                candidates = []
        if not required and not candidates:
            return 0
        try:
            verdict = await self.counters.admit(rid, required, candidates)
        except StateUnavailable:
            if self.store.on_error == "deny":
                raise StateUnavailableError(
                    "The gateway cannot reach its shared state to check rate limits; try again shortly."
                ) from None
            return 0  # `allow`: served without limits while the store is down (logged once, counted)
        if verdict.rejections:
            for index, kind, _ in verdict.rejections:
                call.rejections.append((adm.rules[index].scope if index < len(required) else "provider", kind))
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
            rule = adm.rules[0]
            if rule.scope == "key" and (rule.rpm or rule.tpm):
                adm.headers = _headers(rule.rpm, rule.tpm, verdict.window(0), rule.rpm_text, rule.tpm_text)
        if not candidates:
            return 0
        chosen = candidates[verdict.chosen]
        if chosen.prefix:
            adm.provider, adm.provider_rid = chosen, rid
        return verdict.chosen

    def _refusal(self, adm: Admission, verdict: Verdict) -> LimitExceeded:
        """The 429 for the most lasting refusal among the required scopes."""
        index, kind, wait = max(verdict.rejections, key=lambda r: (r[1] == "budget", r[2]))
        scope = adm.rules[index].scope
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
            headers.update(_headers(check.rpm, check.tpm, verdict.window(index)))
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
        settle = adm.served or usage is not None
        tokens = usage.prompt_tokens + usage.completion_tokens if usage is not None else adm.tokens
        if adm.reserved:
            adm.reserved = False
            if adm.budget is not None and settle:
                if usage is None:
                    cost = adm.cost
                elif price is not None:
                    cost = round(price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) * NANO)
                else:
                    cost = 0
                self.counters.settle(adm.rid, adm.required, False, tokens, cost, self._spent_period(adm))
            else:
                self.counters.settle(adm.rid, adm.required, not settle, tokens)
        provider = adm.provider
        if provider is not None:
            adm.provider = None
            end = ScopeEnd(provider.prefix, False, tpm=bool(provider.tpm), concurrency=bool(provider.concurrency),
                           tokens=tokens if settle else 0, estimate=provider.tokens)  # fmt: skip
            self.counters.settle_soon([(adm.provider_rid, [end])])

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


# The header names as multidict's case-insensitive strings: aiohttp's headers take them as they are.
_LIMIT_REQUESTS = istr("x-ratelimit-limit-requests")
_REMAINING_REQUESTS = istr("x-ratelimit-remaining-requests")
_RESET_REQUESTS = istr("x-ratelimit-reset-requests")
_LIMIT_TOKENS = istr("x-ratelimit-limit-tokens")
_REMAINING_TOKENS = istr("x-ratelimit-remaining-tokens")
_RESET_TOKENS = istr("x-ratelimit-reset-tokens")

#: ".001" ... ".999" (trailing zeros dropped), "" for 0: a duration's fraction of a second.
_FRACTIONS = ("", *(f".{r:03d}".rstrip("0") for r in range(1, 1000)))


def duration(ms: int) -> str:
    """OpenAI's (Go's) duration format: `120ms`, `1s`, `8.64s`, `6m0s`, `1h2m3s`."""
    if type(ms) is not int:
        ms = int(ms)
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0ms"
    if ms < 60_000:
        return f"{ms // 1000}{_FRACTIONS[ms % 1000]}s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}{_FRACTIONS[rest % 1000]}s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}"


def _seconds(ms: int) -> str:
    """`retry-after`: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(ms / 1000)))


def _headers(rpm: int, tpm: int, window: Sequence[int], rpm_text: str = "", tpm_text: str = "") -> dict[str, str]:
    """The `x-ratelimit-*` headers of a scope's rpm and tpm (0: none), from its `Verdict.window`
    (requests remaining, reset ms, tokens remaining, reset ms); `*_text`: the limits as text."""
    requests_left, requests_reset, tokens_left, tokens_reset = window
    if rpm and tpm:  # the common case, as one dict (one window on Redis: one reset, formatted once)
        reset = duration(requests_reset)
        return {
            _LIMIT_REQUESTS: rpm_text or str(rpm),
            _REMAINING_REQUESTS: str(requests_left) if requests_left > 0 else "0",
            _RESET_REQUESTS: reset,
            _LIMIT_TOKENS: tpm_text or str(tpm),
            _REMAINING_TOKENS: str(tokens_left) if tokens_left > 0 else "0",
            _RESET_TOKENS: reset if tokens_reset == requests_reset else duration(tokens_reset),
        }
    headers: dict[str, str] = {}
    if rpm:
        headers[_LIMIT_REQUESTS] = rpm_text or str(rpm)
        headers[_REMAINING_REQUESTS] = str(requests_left) if requests_left > 0 else "0"
        headers[_RESET_REQUESTS] = duration(requests_reset)
    if tpm:
        headers[_LIMIT_TOKENS] = tpm_text or str(tpm)
        headers[_REMAINING_TOKENS] = str(tokens_left) if tokens_left > 0 else "0"
        headers[_RESET_TOKENS] = duration(tokens_reset)
    return headers
