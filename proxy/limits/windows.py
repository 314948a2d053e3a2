"""The counters behind admission: sliding-window logs, leases and budgets.

One `Counters` per store, kept with it across reloads (so a SIGHUP never resets a window
or a budget). `MemoryCounters` is the one-process implementation; `RedisCounters`
(`proxy.limits.redis`) runs exactly the same algorithm as one Lua script, so N processes
on one Redis admit as one. Both are driven by `admit` (check every scope, then reserve in
all of them, or in none) and `finish` (settle to the real usage, or release).

Why sliding-window logs (not GCRA, not fixed windows): the contract is "never more than R
requests in any 60-second interval, and R of 4R simultaneous requests get through". A log
holds exactly that: an entry per admission, counted while it is younger than the window,
so there is no 2x burst at a boundary (fixed windows) and no refill within the minute
after a full burst (GCRA with a burst of R admits about 2R in the first minute). Tokens
use the same log, each entry weighing its reservation, which settlement rewrites to the
real usage. Entries leave the log in admission order, so purging is amortised O(1).

Concurrency slots and budget reservations are leases: a process that dies holding them
frees them when the lease runs out (the living refresh theirs).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

WINDOW_MS = 60_000
LEASE_MS = 300_000
#: `ScopeCheck.kind` codes in rejections, in `proxy.errors.LimitKind` words.
KINDS = ("", "requests", "tokens", "concurrency", "budget")
NANO = 1_000_000_000  # budgets are counted in nano-USD: integers, exact in Lua's doubles
# A scope's budget fields without a budget (the script reads them only with one): admission's
# budget, spent_key, cost and period_left; settlement's budget, spent_key, cost and ttl.
NO_BUDGET = "0\0\0" "0\0" "0"


@dataclass(slots=True)
class ScopeCheck:
    """One scope's limits for one admission; 0 means "no such limit"."""

    prefix: str  # "k:<key name>", "r:<route pattern>", "p:<provider name>"
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    tokens: int = 0  # this request's reservation (counted where tpm is set)
    budget: int = 0  # nano-USD
    spent_key: str = ""  # the budget period's id, e.g. "m2025-06"
    cost: int = 0  # nano-USD estimate
    period_left_ms: int = 0  # until the period ends (0: total, never)
    #: The fixed fields' wire text, `prefix\0rpm\0tpm\0concurrency\0`, when the caller has it
    #: made once per scope (limits do not change within a config); "" to make it here.
    head: str = field(default="", repr=False, compare=False)

    def wire(self) -> str:
        """The Lua script's fields for this scope, NUL-separated (without a budget, its fields are 0)."""
        head = self.head or f"{self.prefix}\0{self.rpm}\0{self.tpm}\0{self.concurrency}\0"
        if self.budget:
            return f"{head}{self.tokens}\0{self.budget}\0{self.spent_key}\0{self.cost}\0{self.period_left_ms}"
        return f"{head}{self.tokens}\0" + NO_BUDGET


@dataclass(slots=True)
class WindowInfo:
    """A scope's state after an admission, for the `x-ratelimit-*` headers (-1: no such limit)."""

    requests_remaining: int = -1
    requests_reset_ms: int = -1
    tokens_remaining: int = -1
    tokens_reset_ms: int = -1


class Verdict:
    """An admission's outcome.

    `status`: 0 admitted; 1 a required scope said no; 2 every candidate (provider) said no.
    `chosen`: the index into `any_of` that was reserved; -1 if none was asked or found.
    `info`: a `WindowInfo` per required scope. `rejections`: every limit that said no, as
    (index over required + any_of, kind, retry after in ms). Counters that read the
    scopes' numbers from one packed reply hand them over as they are (`numbers` from
    `at`, 4 per scope): `window` reads them without making the `WindowInfo` objects.
    """

    __slots__ = ("_at", "_info", "_numbers", "_scopes", "chosen", "rejections", "status")

    def __init__(self, status: int, chosen: int = -1, info: list[WindowInfo] | None = None,
                 rejections: list[tuple[int, str, int]] | None = None, numbers: Sequence[int] = (), at: int = 0,
                 scopes: int = 0) -> None:  # fmt: skip
        self.status = status
        self.chosen = chosen
        self.rejections = [] if rejections is None else rejections
        self._info = info
        self._numbers = numbers
        self._at = at
        self._scopes = scopes

    @property
    def info(self) -> list[WindowInfo]:
        if self._info is None:
            numbers, at = self._numbers, self._at
            self._info = [WindowInfo(*numbers[at + 4 * i : at + 4 * i + 4]) for i in range(self._scopes)]
        return self._info

    def window(self, index: int) -> Sequence[int]:
        """Scope `index`'s requests remaining, their reset (ms), tokens remaining, their reset."""
        if self._info is None:
            at = self._at + 4 * index
            return self._numbers[at : at + 4]
        info = self._info[index]
        return info.requests_remaining, info.requests_reset_ms, info.tokens_remaining, info.tokens_reset_ms

    def __repr__(self) -> str:
        return f"Verdict(status={self.status}, chosen={self.chosen}, info={self.info}, rejections={self.rejections})"


@dataclass(slots=True)
class ScopeEnd:
    """How one scope of a reservation ends: settled to real usage, or released."""

    prefix: str
    release: bool  # True: as if never admitted; False: keep the request, rewrite its tokens
    rpm: bool = False
    tpm: bool = False
    concurrency: bool = False
    budget: bool = False
    tokens: int = 0  # the real usage
    estimate: int = 0  # what was reserved
    spent_key: str = ""
    cost: int = 0  # nano-USD, the real cost
    spent_ttl_ms: int = 0  # keep the period's spend this long (0: forever)

    def wire(self) -> str:
        """The Lua script's fields for this scope, NUL-separated: mode, then as `end_wire`."""
        head = f"{self.prefix}\0{int(self.rpm)}\0{int(self.tpm)}\0{int(self.concurrency)}\0"
        return end_wire(self.release, head, self.tokens, self.estimate, int(self.budget), self.spent_key, self.cost,
                        self.spent_ttl_ms)  # fmt: skip


def end_wire(release: bool, head: str, tokens: int, estimate: int, budget: int = 0, spent_key: str = "", cost: int = 0,
             spent_ttl_ms: int = 0) -> str:  # fmt: skip
    """A settlement's fields for the script: mode, `head` (prefix, rpm, tpm, concurrency: a
    `ScopeCheck.head`, where only > 0 counts), tokens, estimate, budget, spent_key, cost, ttl."""
    if budget:
        return (f"{'r' if release else 's'}\0{head}{tokens}\0{estimate}\0{budget}\0{spent_key}\0{cost}"
                f"\0{spent_ttl_ms}")  # fmt: skip
    return f"{'r' if release else 's'}\0{head}{tokens}\0{estimate}\0" + NO_BUDGET


class Counters(ABC):
    """Admission and settlement over every scope of one request, atomically."""

    def __init__(self, window_ms: int = WINDOW_MS, lease_ms: int = LEASE_MS) -> None:
        self.window_ms = window_ms
        self.lease_ms = lease_ms

    @abstractmethod
    def admit(self, rid: str, required: Sequence[ScopeCheck], any_of: Sequence[ScopeCheck]) -> Awaitable[Verdict]:
        """Reserve in every `required` scope and the first of `any_of` with room, or in none.

        An awaitable rather than a coroutine, so that a batching implementation hands out its
        future itself: one frame less to resume per admission."""

    @abstractmethod
    async def finish(self, rid: str, ends: Sequence[ScopeEnd]) -> None:
        """Settle or release reservation `rid` in each scope of `ends`."""

    @abstractmethod
    def settle_soon(self, items: Sequence[tuple[str, Sequence[ScopeEnd]]]) -> None:
        """`finish` several reservations without waiting: applied now, or queued now and sent
        within this event-loop turn. A request's handler returns at once (its keep-alive
        connection is free for the next request), and a cancelled caller loses nothing."""

    def settle(self, rid: str, checks: Sequence[ScopeCheck], release: bool, tokens: int, cost: int = 0,
               spent: tuple[str, int] = ("", 0)) -> None:  # fmt: skip
        """`settle_soon` of the scopes `checks` of reservation `rid`: released, or settled to
        `tokens` (a budget: charged `cost`, in period `spent[0]`, kept `spent[1]` ms). Each
        `ScopeEnd` follows from its check; Redis writes the text without making them."""
        ends = [ScopeEnd(c.prefix, release, c.rpm > 0, c.tpm > 0, c.concurrency > 0, c.budget > 0, tokens, c.tokens,
                         spent[0], cost, spent[1]) for c in checks]  # fmt: skip
        self.settle_soon([(rid, ends)])

    async def touch(self, leases: Sequence[tuple[str, str]]) -> None:  # noqa: B027  # memory leases never lapse
        """Extend the leases (concurrency, budget) of (rid, prefix) pairs still in flight."""

    @abstractmethod
    async def snapshot(self, prefix: str, spent_key: str = "") -> dict[str, float]:
        """requests, tokens, concurrency, reserved_usd and spent_usd of one scope (tests, debugging)."""

    async def close(self) -> None:  # noqa: B027  # nothing to stop in process
        """Stop background work (the lease refresher); called when the store closes."""


# ---------------------------------------------------------------- in process


@dataclass(slots=True)
class _Scope:
    requests: dict[str, int] = field(default_factory=dict)  # rid -> admitted at (ms), oldest first
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # rid -> (at, tokens), oldest first
    token_sum: int = 0
    inflight: set[str] = field(default_factory=set)
    reserved: dict[str, int] = field(default_factory=dict)  # rid -> nano-USD
    reserved_sum: int = 0
    spent: dict[str, int] = field(default_factory=dict)  # period id -> nano-USD


class MemoryCounters(Counters):
    """The same algorithm as the Lua script, for one process (no leases: they die together)."""

    def __init__(self, window_ms: int = WINDOW_MS, lease_ms: int = LEASE_MS) -> None:
        super().__init__(window_ms, lease_ms)
        self._scopes: dict[str, _Scope] = {}

    def _scope(self, prefix: str) -> _Scope:
        scope = self._scopes.get(prefix)
        if scope is None:
            scope = self._scopes[prefix] = _Scope()
        return scope

    def _purge(self, s: _Scope, now: int) -> None:
        horizon = now - self.window_ms  # entries older than this have left the window
        requests = s.requests
        while requests:
            rid = next(iter(requests))
            if requests[rid] >= horizon:
                break
            del requests[rid]
        tokens = s.tokens
        while tokens:
            rid = next(iter(tokens))
            at, n = tokens[rid]
            if at >= horizon:
                break
            del tokens[rid]
            s.token_sum -= n

    def _check(self, c: ScopeCheck, s: _Scope, index: int, now: int, rejections: list[tuple[int, str, int]]) -> bool:
        ok = True
        window = self.window_ms
        if c.rpm:
            n = len(s.requests)
            if n >= c.rpm:
                at = list(s.requests.values())[n - c.rpm]
                rejections.append((index, "requests", at + window + 1 - now))
                ok = False
        if c.tpm:
            used = max(s.token_sum, 0)
            if used + c.tokens > c.tpm:
                wait = window
                if c.tokens <= c.tpm:
                    need = used + c.tokens - c.tpm
                    for at, n in s.tokens.values():
                        need -= n
                        if need <= 0:
                            wait = at + window + 1 - now
                            break
                rejections.append((index, "tokens", wait))
                ok = False
        if c.concurrency and len(s.inflight) >= c.concurrency:
            rejections.append((index, "concurrency", 1000))
            ok = False
        if c.budget and s.spent.get(c.spent_key, 0) + s.reserved_sum + c.cost > c.budget:
            rejections.append((index, "budget", c.period_left_ms))
            ok = False
        return ok

    def _take(self, rid: str, c: ScopeCheck, s: _Scope, now: int) -> None:
        if c.rpm:
            s.requests[rid] = now
        if c.tpm:
            s.tokens[rid] = (now, c.tokens)
            s.token_sum += c.tokens
        if c.concurrency:
            s.inflight.add(rid)
        if c.budget:
            s.reserved[rid] = c.cost
            s.reserved_sum += c.cost

    def _info(self, c: ScopeCheck, s: _Scope, now: int) -> WindowInfo:
        info = WindowInfo()
        window = self.window_ms
        if c.rpm:
            info.requests_remaining = max(c.rpm - len(s.requests), 0)
            info.requests_reset_ms = next(iter(s.requests.values())) + window + 1 - now if s.requests else 0
        if c.tpm:
            info.tokens_remaining = max(c.tpm - s.token_sum, 0)
            info.tokens_reset_ms = next(iter(s.tokens.values()))[0] + window + 1 - now if s.tokens else 0
        return info

    async def admit(self, rid: str, required: Sequence[ScopeCheck], any_of: Sequence[ScopeCheck]) -> Verdict:
        now = int(time.monotonic() * 1000)
        scopes = [self._scope(c.prefix) for c in (*required, *any_of)]
        for s in scopes:
            self._purge(s, now)
        rejections: list[tuple[int, str, int]] = []
        ok = True
        for i, c in enumerate(required):
            ok = self._check(c, scopes[i], i, now, rejections) and ok
        chosen = -1
        status = 0 if ok else 1
        if ok and any_of:
            n = len(required)
            fits = (j for j, c in enumerate(any_of) if self._check(c, scopes[n + j], n + j, now, rejections))
            chosen = next(fits, -1)
            if chosen < 0:
                status = 2
        if status == 0:
            for i, c in enumerate(required):
                self._take(rid, c, scopes[i], now)
            if chosen >= 0:
                self._take(rid, any_of[chosen], scopes[len(required) + chosen], now)
        info = [self._info(c, scopes[i], now) for i, c in enumerate(required)]
        return Verdict(status, chosen, info, rejections)

    async def finish(self, rid: str, ends: Sequence[ScopeEnd]) -> None:
        self.settle_soon([(rid, ends)])

    def settle_soon(self, items: Sequence[tuple[str, Sequence[ScopeEnd]]]) -> None:
        for rid, ends in items:
            self._finish_now(rid, ends)

    def _finish_now(self, rid: str, ends: Sequence[ScopeEnd]) -> None:
        now = int(time.monotonic() * 1000)
        for e in ends:
            s = self._scope(e.prefix)
            if e.release and e.rpm:
                s.requests.pop(rid, None)
            if e.tpm:
                old = s.tokens.get(rid)
                if old is not None:
                    if e.release:
                        del s.tokens[rid]
                        s.token_sum -= old[1]
                    else:
                        s.tokens[rid] = (old[0], e.tokens)
                        s.token_sum += e.tokens - old[1]
                elif not e.release and e.tokens > e.estimate:  # its minute is over: count the excess now
                    s.tokens[rid + "+"] = (now, e.tokens - e.estimate)
                    s.token_sum += e.tokens - e.estimate
            if e.concurrency:
                s.inflight.discard(rid)
            if e.budget:
                s.reserved_sum -= s.reserved.pop(rid, 0)
                if not e.release and e.cost:
                    s.spent[e.spent_key] = s.spent.get(e.spent_key, 0) + e.cost

    async def snapshot(self, prefix: str, spent_key: str = "") -> dict[str, float]:
        s = self._scope(prefix)
        self._purge(s, int(time.monotonic() * 1000))
        return {
            "requests": len(s.requests),
            "tokens": s.token_sum,
            "concurrency": len(s.inflight),
            "reserved_usd": s.reserved_sum / NANO,
            "spent_usd": s.spent.get(spent_key, 0) / NANO,
        }
