"""The admission counters: the in-process ones and the Lua script on a real Redis, same tests.

The window is shortened (`window_ms`) so expiry is observable in a test; production uses 60 s.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from proxy.limits.redis import RedisCounters
from proxy.limits.windows import NANO, Counters, MemoryCounters, ScopeCheck, ScopeEnd
from proxy.state import RedisStore
from proxy.testing import RedisServer

WINDOW = 600


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters(window_ms=WINDOW)
        return
    store = RedisStore(redis_server.url)
    try:
        yield RedisCounters(store, window_ms=WINDOW)
    finally:
        await store.close()


def scope(**kw: int | str) -> ScopeCheck:
    """A scope of its own (fresh prefix: tests share one Redis)."""
    return ScopeCheck(f"k:{uuid.uuid4().hex}", **kw)  # type: ignore[arg-type]


async def test_rpm_admits_exactly_the_limit_then_frees_after_the_window(counters: Counters) -> None:
    s = scope(rpm=3)
    verdicts = [await counters.admit(f"r{i}", [s], []) for i in range(5)]
    assert [v.status for v in verdicts] == [0, 0, 0, 1, 1]
    assert [v.info[0].requests_remaining for v in verdicts[:3]] == [2, 1, 0]
    rejected = verdicts[3].rejections
    assert rejected[0][:2] == (0, "requests") and 0 < rejected[0][2] <= WINDOW + 1
    await asyncio.sleep((WINDOW + 50) / 1000)
    assert (await counters.admit("r5", [s], [])).status == 0


async def test_concurrent_admissions_are_atomic(counters: Counters) -> None:
    s = scope(rpm=50)
    verdicts = await asyncio.gather(*(counters.admit(f"r{i}", [s], []) for i in range(200)))
    assert sum(v.status == 0 for v in verdicts) == 50


async def test_tokens_reserve_settle_and_release(counters: Counters) -> None:
    s = scope(tpm=100, tokens=40)
    assert (await counters.admit("a", [s], [])).status == 0
    assert (await counters.admit("b", [s], [])).status == 0
    refused = await counters.admit("c", [s], [])
    assert refused.status == 1 and refused.rejections[0][1] == "tokens"
    await counters.finish("a", [ScopeEnd(s.prefix, False, tpm=True, tokens=10, estimate=40)])  # settled lower
    assert (await counters.snapshot(s.prefix))["tokens"] == 50
    assert (await counters.admit("c", [s], [])).status == 0
    await counters.finish("c", [ScopeEnd(s.prefix, True, tpm=True)])  # failed: released
    assert (await counters.snapshot(s.prefix))["tokens"] == 50
    too_big = await counters.admit("d", [ScopeCheck(s.prefix, tpm=100, tokens=101)], [])
    assert too_big.status == 1 and too_big.rejections[0][2] >= WINDOW


async def test_concurrency_is_released_by_finish(counters: Counters) -> None:
    s = scope(concurrency=2)
    assert [(await counters.admit(r, [s], [])).status for r in "abc"] == [0, 0, 1]
    await counters.finish("a", [ScopeEnd(s.prefix, False, concurrency=True)])
    assert (await counters.snapshot(s.prefix))["concurrency"] == 1
    assert (await counters.admit("c", [s], [])).status == 0


async def test_budget_counts_spent_and_reserved(counters: Counters) -> None:
    s = scope(budget=NANO, spent_key="m1", cost=NANO // 4)
    assert [(await counters.admit(r, [s], [])).status for r in "abcde"] == [0, 0, 0, 0, 1]
    end = ScopeEnd(s.prefix, False, budget=True, spent_key="m1", cost=NANO // 10)
    await counters.finish("a", [end])
    snap = await counters.snapshot(s.prefix, "m1")
    assert snap["spent_usd"] == pytest.approx(0.1) and snap["reserved_usd"] == pytest.approx(0.75)
    assert (await counters.admit("e", [s], [])).status == 1  # 0.1 spent + 0.75 reserved + 0.25 > 1
    await counters.finish("b", [end])
    assert (await counters.admit("e", [s], [])).status == 0  # 0.2 + 0.5 + 0.25 <= 1
    other_period = ScopeCheck(s.prefix, budget=NANO, spent_key="m2", cost=NANO // 4)
    # A new period starts with nothing spent, but the reservations in flight still count.
    assert [(await counters.admit(r, [other_period], [])).status for r in "fg"] == [0, 1]


async def test_first_candidate_with_room_is_taken_and_full_ones_are_reported(counters: Counters) -> None:
    key, full, free = scope(rpm=10), scope(rpm=1), scope(rpm=5)
    assert (await counters.admit("x", [], [full])).status == 0
    verdict = await counters.admit("a", [key], [full, free])
    assert verdict.status == 0 and verdict.chosen == 1
    assert verdict.rejections[0][:2] == (1, "requests")
    none = await counters.admit("b", [key], [full])
    assert none.status == 2 and none.chosen == -1
    assert (await counters.snapshot(key.prefix))["requests"] == 1, "nothing is taken when no candidate has room"


async def test_a_refused_scope_takes_nothing_anywhere(counters: Counters) -> None:
    a, b = scope(rpm=5, tpm=100, tokens=10), scope(rpm=1)
    assert (await counters.admit("x", [b], [])).status == 0
    verdict = await counters.admit("y", [a, b], [])
    assert verdict.status == 1 and [r[:2] for r in verdict.rejections] == [(1, "requests")]
    snap = await counters.snapshot(a.prefix)
    assert snap["requests"] == 0 and snap["tokens"] == 0


async def test_leases_are_renewed_while_held_and_lapse_when_their_process_is_gone(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    living = RedisCounters(store, window_ms=WINDOW, lease_ms=300)
    other = RedisStore(redis_server.url)
    dead = RedisCounters(other, window_ms=WINDOW, lease_ms=300)
    try:
        s = scope(concurrency=2)
        assert (await living.admit("alive", [s], [])).status == 0
        assert (await dead.admit("gone", [s], [])).status == 0
        await dead.close()  # its process died: nobody renews its lease
        await asyncio.sleep(0.6)  # two leases long: the living one was renewed meanwhile
        snap = await living.snapshot(s.prefix)
        assert snap["concurrency"] == 1
        await living.finish("alive", [ScopeEnd(s.prefix, False, concurrency=True)])
        assert (await living.snapshot(s.prefix))["concurrency"] == 0
    finally:
        await living.close()
        await store.close()
        await other.close()


async def test_admissions_and_settlements_of_mixed_shapes_in_one_batch(counters: Counters) -> None:
    """Calls of one loop turn travel together (one script run on Redis): each is read whole."""
    plain, tokens = scope(rpm=10), scope(tpm=1000, tokens=100)
    budget = scope(budget=NANO, spent_key="m1", cost=NANO // 10, concurrency=5)
    shapes = [plain, tokens, budget, plain, tokens, budget]
    verdicts = await asyncio.gather(*(counters.admit(f"a{i}", [s], []) for i, s in enumerate(shapes)))
    assert [v.status for v in verdicts] == [0] * 6
    counters.settle_soon([
        ("a0", [ScopeEnd(plain.prefix, True, rpm=True)]),
        ("a1", [ScopeEnd(tokens.prefix, False, tpm=True, tokens=30, estimate=100)]),
        ("a2", [ScopeEnd(budget.prefix, False, concurrency=True, budget=True, spent_key="m1", cost=NANO // 20)]),
        ("a3", [ScopeEnd(plain.prefix, False, rpm=True)]),
        ("a4", [ScopeEnd(tokens.prefix, True, tpm=True)]),
        ("a5", [ScopeEnd(budget.prefix, True, concurrency=True, budget=True)]),
    ])  # fmt: skip
    await counters.finish("none", [ScopeEnd(plain.prefix, False)])  # the same batch: awaited, so all are applied
    assert (await counters.snapshot(plain.prefix))["requests"] == 1
    assert (await counters.snapshot(tokens.prefix))["tokens"] == 30
    snap = await counters.snapshot(budget.prefix, "m1")
    assert snap["concurrency"] == 0 and snap["reserved_usd"] == 0 and snap["spent_usd"] == 0.05


async def test_a_settlement_and_an_admission_of_one_turn_settle_first(counters: Counters) -> None:
    """On Redis they travel as one call: what the settlement frees is there for the admission."""
    s = scope(concurrency=1)
    assert (await counters.admit("a", [s], [])).status == 0
    counters.settle_soon([("a", [ScopeEnd(s.prefix, False, concurrency=True)])])
    assert (await counters.admit("b", [s], [])).status == 0
    assert (await counters.snapshot(s.prefix))["concurrency"] == 1


async def test_one_batch_crosses_every_limit_of_a_scope_exactly(counters: Counters) -> None:
    """A loop turn's admissions to one scope (one script run on Redis, which reads the scope's
    state once and keeps it current): each sees the ones before it."""
    rpm = scope(rpm=4)
    tpm = scope(tpm=250, tokens=100)
    conc = scope(concurrency=3)
    budget = scope(budget=NANO, spent_key="m1", cost=NANO // 3)
    both = scope(rpm=5, tpm=1000, tokens=300)
    for s, admitted in ((rpm, 4), (tpm, 2), (conc, 3), (budget, 3), (both, 3)):
        verdicts = await asyncio.gather(*(counters.admit(f"r{i}", [s], []) for i in range(6)))
        assert [v.status for v in verdicts] == [0] * admitted + [1] * (6 - admitted), s
    fresh = scope(rpm=3, tpm=90, tokens=30)
    verdicts = await asyncio.gather(*(counters.admit(f"f{i}", [fresh], []) for i in range(3)))
    assert [v.info[0].requests_remaining for v in verdicts] == [2, 1, 0]
    assert [v.info[0].tokens_remaining for v in verdicts] == [60, 30, 0]
    assert all(0 < v.info[0].requests_reset_ms <= WINDOW + 1 for v in verdicts)
    snap = await counters.snapshot(budget.prefix, "m1")
    assert snap["reserved_usd"] == pytest.approx(1.0, abs=1e-8) and snap["concurrency"] == 0
    assert (await counters.snapshot(conc.prefix))["concurrency"] == 3
    assert (await counters.snapshot(both.prefix))["tokens"] == 900


async def test_every_key_a_reservation_writes_expires_on_its_own(redis_server: RedisServer) -> None:
    """Scopes nobody uses any more must not stay in Redis: each key written carries a TTL."""
    store = RedisStore(redis_server.url)
    counters = RedisCounters(store, window_ms=WINDOW)
    shapes = [scope(rpm=5), scope(tpm=1000, tokens=10), scope(concurrency=5),
              scope(budget=NANO, spent_key="m1", cost=NANO // 10)]  # fmt: skip
    try:
        verdicts = await asyncio.gather(*(counters.admit(f"e{i}{j}", [s], []) for i in range(3)
                                          for j, s in enumerate(shapes)))  # fmt: skip
        assert [v.status for v in verdicts] == [0] * 12
    finally:
        await counters.close()
        await store.close()
    client = redis.Redis.from_url(redis_server.url)
    try:
        for s in shapes:
            keys = client.keys(f"relaygate:lim:{s.prefix}:*")
            assert keys, s
            assert all(client.pttl(k) > 0 for k in keys), {k: client.pttl(k) for k in keys}
    finally:
        client.close()
