"""The YAML of limits, budgets, prices and resilience (DESIGN §4), read into frozen values.

`proxy.config.load` calls these where the keys sit (client keys, providers, routes), so
every error names the file, line and key path like the rest of the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config.options import Options

Period = Literal["day", "week", "month", "total"]
Strategy = Literal["fallback", "weighted", "least_busy"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")
STRATEGIES: tuple[Strategy, ...] = ("fallback", "weighted", "least_busy")
# The vendors' own words for the same periods (LiteLLM's budget_duration, cloud consoles).
_PERIOD_ALIASES: dict[str, Period] = {"daily": "day", "weekly": "week", "monthly": "month", "1d": "day", "7d": "week",
                                      "1w": "week", "1mo": "month", "lifetime": "total"}  # fmt: skip


@dataclass(slots=True, frozen=True)
class Limits:
    """`limits: {rpm, tpm, concurrency}`; None = no such limit."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.concurrency is not None


@dataclass(slots=True, frozen=True)
class Budget:
    """`budget: {usd, period}`: spend per calendar period in UTC (or in total)."""

    usd: float
    period: Period = "month"


@dataclass(slots=True, frozen=True)
class Price:
    """`price:` USD per 1M tokens; cached input costs `input` unless `cached_input` is set."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        """USD: uncached input * input + cached input * cached_input + output * output, per 1M."""
        if cached > prompt:
            cached = prompt
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1e6


@dataclass(slots=True, frozen=True)
class Retries:
    """`retries: {attempts, backoff, max_backoff}`: tries on one target, the first included."""

    attempts: int = 1
    backoff: float = 0.25
    max_backoff: float = 8.0


@dataclass(slots=True, frozen=True)
class BreakerSettings:
    """`breaker: {failures, cooldown}`: open after `failures` in a row, probe after `cooldown` s."""

    failures: int = 5
    cooldown: float = 30.0


@dataclass(slots=True, frozen=True)
class ProviderPolicy:
    """What the core reads from every provider block besides the provider's own keys."""

    limits: Limits | None = None
    retries: Retries | None = None
    breaker: BreakerSettings | None = None


def read_limits(opts: Options, key: str = "limits") -> Limits | None:
    if key not in opts:
        return None
    block = opts.block(key)
    limits = Limits(
        rpm=block.int("rpm", None, minimum=1),
        tpm=block.int("tpm", None, minimum=1),
        concurrency=block.int("concurrency", None, minimum=1),
    )
    block.check_unused()
    if not limits:
        raise opts.error(key, "expected at least one of rpm, tpm, concurrency")
    return limits


def read_budget(opts: Options) -> Budget | None:
    if "budget" not in opts:
        return None
    block = opts.block("budget")
    usd = block.number("usd")
    if usd <= 0:
        raise block.error("usd", f"expected a number of dollars > 0, got {usd!r}")
    raw: str = block.str("period", "month").strip().lower()
    period = _PERIOD_ALIASES.get(raw) or next((p for p in PERIODS if p == raw), None)
    if period is None:
        raise block.error("period", f"expected one of {', '.join(PERIODS)}, got {block.raw('period')!r}")
    block.check_unused()
    return Budget(float(usd), period)


def read_price(opts: Options) -> Price | None:
    if "price" not in opts:
        return None
    block = opts.block("price")
    cached = block.number("cached_input", None)
    price = Price(float(block.number("input")), float(block.number("output")),
                  None if cached is None else float(cached))  # fmt: skip
    block.check_unused()
    return price


def read_strategy(opts: Options) -> Strategy:
    raw: str = opts.str("strategy", "fallback").strip().lower().replace("-", "_")
    strategy = next((s for s in STRATEGIES if s == raw), None)
    if strategy is None:
        raise opts.error("strategy", f"expected one of {', '.join(STRATEGIES)}, got {opts.raw('strategy')!r}")
    return strategy


def read_weight(opts: Options) -> float:
    weight = opts.number("weight", 1.0)
    if weight <= 0:
        raise opts.error("weight", f"expected a number > 0, got {weight!r}")
    return float(weight)


def read_provider_policy(opts: Options) -> ProviderPolicy:
    """`limits`, `retries` and `breaker` of one `providers.<name>` block."""
    retries = breaker = None
    if "retries" in opts:
        block = opts.block("retries")
        retries = Retries(
            attempts=block.int("attempts", 3, minimum=1),
            backoff=float(block.number("backoff", 0.25)),
            max_backoff=float(block.number("max_backoff", 8.0)),
        )
        block.check_unused()
    if "breaker" in opts:
        block = opts.block("breaker")
        breaker = BreakerSettings(block.int("failures", 5, minimum=1), float(block.number("cooldown", 30.0)))
        block.check_unused()
    return ProviderPolicy(read_limits(opts), retries, breaker)


def unshared_limits(has_limits: bool, redis: str | None, workers: int) -> str | None:
    """Why N processes cannot serve this config: limits counted per process would admit N x."""
    if workers > 1 and has_limits and redis is None:
        return (
            f"--workers {workers} with limits or budgets needs state.redis: each process would count "
            "on its own and admit up to N times every limit. Set state.redis (shared counters) or serve "
            "with one worker."
        )
    return None
