"""`Counters` on Redis: the algorithm of `MemoryCounters`, as one Lua script.

The script is loaded once per connection pool and called with EVALSHA (redis-py's
`Script` loads it again by itself after a Redis restart emptied the script cache). One
call admits a request in every scope (or in none); one call settles it. Time is Redis's
own clock (`TIME`), so replicas with skewed clocks still share one window.

Keys live under `relaygate:lim:<scope>:` (scope `k:<key>`, `r:<route>`, `p:<provider>`) and
expire on their own once a scope is idle. One script touches every scope of a request, so
the scopes must live on one Redis node: a single Redis (with replicas for failover) serves;
Redis Cluster does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..state import StateUnavailable
from .windows import KINDS, LEASE_MS, NANO, WINDOW_MS, Counters, ScopeCheck, ScopeEnd, Verdict, WindowInfo

if TYPE_CHECKING:
    from ..state import RedisStore

log = logging.getLogger("relaygate.limits")
NS = "relaygate:lim:"
#: After a failed call, requests skip Redis (and get `on_error` at once) for this long,
#: so a dead or black-holed Redis costs one timeout per interval, not one per request.
PROBE_INTERVAL = 0.5

SCRIPT = r"""
local op = ARGV[1]
local W = tonumber(ARGV[2])
local LEASE = tonumber(ARGV[3])
local NS = ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- HMGET + HDEL `members` of hash `key` in chunks (unpack has a stack limit); their sum.
local function take_sum(key, members)
  local s = 0
  for i = 1, #members, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #members) do chunk[#chunk + 1] = members[j] end
    for _, v in ipairs(redis.call('HMGET', key, unpack(chunk))) do
      if v then s = s + tonumber(v) end
    end
    redis.call('HDEL', key, unpack(chunk))
  end
  return s
end

local function purge(p, rpm, tpm, conc, budget)
  local horizon = '(' .. (now - W)
  if rpm > 0 then redis.call('ZREMRANGEBYSCORE', p .. 'q', '-inf', horizon) end
  if tpm > 0 then
    local old = redis.call('ZRANGEBYSCORE', p .. 't', '-inf', horizon)
    if #old > 0 then
      redis.call('DECRBY', p .. 'ts', take_sum(p .. 'th', old))
      redis.call('ZREMRANGEBYSCORE', p .. 't', '-inf', horizon)
    end
  end
  if conc > 0 then redis.call('ZREMRANGEBYSCORE', p .. 'c', '-inf', now) end
  if budget > 0 then
    local gone = redis.call('ZRANGEBYSCORE', p .. 'b', '-inf', now)
    if #gone > 0 then
      redis.call('DECRBY', p .. 'bs', take_sum(p .. 'bh', gone))
      redis.call('ZREMRANGEBYSCORE', p .. 'b', '-inf', now)
    end
  end
end

local function num(key)
  return math.max(tonumber(redis.call('GET', key) or '0'), 0)
end

-- One scope's fields start at ARGV[i]: prefix rpm tpm conc tokens budget spent_key cost period_left
local function read(i)
  return NS .. ARGV[i] .. ':', tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
         tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), ARGV[i + 6], tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
end

local function check(i, index, rej)
  local p, rpm, tpm, conc, tokens, budget, spent_key, cost, period_left = read(i)
  local ok = true
  if rpm > 0 then
    local n = redis.call('ZCARD', p .. 'q')
    if n >= rpm then
      local e = redis.call('ZRANGE', p .. 'q', n - rpm, n - rpm, 'WITHSCORES')
      rej[#rej + 1] = index; rej[#rej + 1] = 1; rej[#rej + 1] = tonumber(e[2]) + W + 1 - now
      ok = false
    end
  end
  if tpm > 0 then
    local used = num(p .. 'ts')
    if used + tokens > tpm then
      local wait = W
      if tokens <= tpm then
        local need = used + tokens - tpm
        local start = 0
        while need > 0 do
          local e = redis.call('ZRANGE', p .. 't', start, start + 99, 'WITHSCORES')
          if #e == 0 then break end
          local members = {}
          for k = 1, #e, 2 do members[#members + 1] = e[k] end
          local vals = redis.call('HMGET', p .. 'th', unpack(members))
          for k = 1, #members do
            need = need - tonumber(vals[k] or '0')
            if need <= 0 then wait = tonumber(e[2 * k]) + W + 1 - now; break end
          end
          start = start + 100
        end
      end
      rej[#rej + 1] = index; rej[#rej + 1] = 2; rej[#rej + 1] = wait
      ok = false
    end
  end
  if conc > 0 and redis.call('ZCARD', p .. 'c') >= conc then
    rej[#rej + 1] = index; rej[#rej + 1] = 3; rej[#rej + 1] = 1000
    ok = false
  end
  if budget > 0 and num(p .. 's:' .. spent_key) + num(p .. 'bs') + cost > budget then
    rej[#rej + 1] = index; rej[#rej + 1] = 4; rej[#rej + 1] = period_left
    ok = false
  end
  return ok
end

local function take(i, rid)
  local p, rpm, tpm, conc, tokens, budget, spent_key, cost = read(i)
  if rpm > 0 then
    redis.call('ZADD', p .. 'q', now, rid)
    redis.call('PEXPIRE', p .. 'q', W + 1000)
  end
  if tpm > 0 then
    redis.call('ZADD', p .. 't', now, rid)
    redis.call('HSET', p .. 'th', rid, tokens)
    redis.call('INCRBY', p .. 'ts', tokens)
    for _, k in ipairs({'t', 'th', 'ts'}) do redis.call('PEXPIRE', p .. k, W + 1000) end
  end
  if conc > 0 then
    redis.call('ZADD', p .. 'c', now + LEASE, rid)
    redis.call('PEXPIRE', p .. 'c', LEASE + 1000)
  end
  if budget > 0 then
    redis.call('ZADD', p .. 'b', now + LEASE, rid)
    redis.call('HSET', p .. 'bh', rid, cost)
    redis.call('INCRBY', p .. 'bs', cost)
    for _, k in ipairs({'b', 'bh', 'bs'}) do redis.call('PEXPIRE', p .. k, LEASE + 1000) end
  end
end

local function oldest(key)
  local e = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #e == 0 then return 0 end
  return tonumber(e[2]) + W + 1 - now
end

local F = 9
if op == 'admit' then
  local rid = ARGV[5]
  local nreq, nany = tonumber(ARGV[6]), tonumber(ARGV[7])
  local base = 8
  for k = 0, nreq + nany - 1 do
    local p, rpm, tpm, conc, _, budget = read(base + k * F)
    purge(p, rpm, tpm, conc, budget)
  end
  local rej = {}
  local ok = true
  for k = 0, nreq - 1 do
    if not check(base + k * F, k, rej) then ok = false end
  end
  local status, chosen = 0, -1
  if not ok then status = 1 end
  if ok and nany > 0 then
    for k = 0, nany - 1 do
      if check(base + (nreq + k) * F, nreq + k, rej) then chosen = k; break end
    end
    if chosen < 0 then status = 2 end
  end
  if status == 0 then
    for k = 0, nreq - 1 do take(base + k * F, rid) end
    if chosen >= 0 then take(base + (nreq + chosen) * F, rid) end
  end
  local out = {status, chosen}
  for k = 0, nreq - 1 do
    local p, rpm, tpm = read(base + k * F)
    local a, b, c, d = -1, -1, -1, -1
    if rpm > 0 then a = math.max(rpm - redis.call('ZCARD', p .. 'q'), 0); b = oldest(p .. 'q') end
    if tpm > 0 then c = math.max(tpm - num(p .. 'ts'), 0); d = oldest(p .. 't') end
    out[#out + 1] = a; out[#out + 1] = b; out[#out + 1] = c; out[#out + 1] = d
  end
  for _, v in ipairs(rej) do out[#out + 1] = v end
  return out
end

if op == 'finish' then
  local rid = ARGV[5]
  local n = tonumber(ARGV[6])
  for k = 0, n - 1 do
    local i = 7 + k * 11
    local p, mode = NS .. ARGV[i] .. ':', ARGV[i + 1]
    local rpm, tpm, conc, budget = ARGV[i + 2] == '1', ARGV[i + 3] == '1', ARGV[i + 4] == '1', ARGV[i + 5] == '1'
    local tokens, estimate, spent_key = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), ARGV[i + 8]
    local cost, ttl = tonumber(ARGV[i + 9]), tonumber(ARGV[i + 10])
    if mode == 'r' and rpm then redis.call('ZREM', p .. 'q', rid) end
    if tpm then
      local old = redis.call('HGET', p .. 'th', rid)
      if old then
        if mode == 'r' then
          redis.call('DECRBY', p .. 'ts', old)
          redis.call('HDEL', p .. 'th', rid)
          redis.call('ZREM', p .. 't', rid)
        else
          redis.call('INCRBY', p .. 'ts', tokens - tonumber(old))
          redis.call('HSET', p .. 'th', rid, tokens)
        end
      elseif mode == 's' and tokens > estimate then
        redis.call('ZADD', p .. 't', now, rid .. '+')
        redis.call('HSET', p .. 'th', rid .. '+', tokens - estimate)
        redis.call('INCRBY', p .. 'ts', tokens - estimate)
        for _, key in ipairs({'t', 'th', 'ts'}) do redis.call('PEXPIRE', p .. key, W + 1000) end
      end
    end
    if conc then redis.call('ZREM', p .. 'c', rid) end
    if budget then
      local r = redis.call('HGET', p .. 'bh', rid)
      if r then
        redis.call('DECRBY', p .. 'bs', r)
        redis.call('HDEL', p .. 'bh', rid)
        redis.call('ZREM', p .. 'b', rid)
      end
      if mode == 's' and cost > 0 then
        local key = p .. 's:' .. spent_key
        redis.call('INCRBY', key, cost)
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      end
    end
  end
  return 1
end

if op == 'touch' then
  local n = tonumber(ARGV[5])
  for k = 0, n - 1 do
    local rid, p = ARGV[6 + 2 * k], NS .. ARGV[7 + 2 * k] .. ':'
    for _, key in ipairs({'c', 'b'}) do
      if redis.call('ZADD', p .. key, 'XX', 'CH', now + LEASE, rid) == 1 then
        redis.call('PEXPIRE', p .. key, LEASE + 1000)
      end
    end
    redis.call('PEXPIRE', p .. 'bh', LEASE + 1000)
    redis.call('PEXPIRE', p .. 'bs', LEASE + 1000)
  end
  return 1
end
if op == 'purge' then
  purge(NS .. ARGV[5] .. ':', 1, 1, 1, 1)
  return 1
end
return redis.error_reply('relaygate limits: unknown op ' .. tostring(op))
"""


class RedisCounters(Counters):
    """One EVALSHA per admission and one per settlement."""

    def __init__(self, store: RedisStore, window_ms: int = WINDOW_MS, lease_ms: int = LEASE_MS) -> None:
        super().__init__(window_ms, lease_ms)
        self.store = store
        self._script = store.redis.register_script(SCRIPT)
        self._head = [window_ms, lease_ms, NS]
        self._skip_until = 0.0
        #: Reservations of this process holding leases: rid -> (taken at, scope prefixes).
        self._leases: dict[str, tuple[float, list[str]]] = {}
        self._refresher: asyncio.Task[None] | None = None

    async def _run(self, op: str, args: list[Any]) -> Any:
        store = self.store
        if store.down and time.monotonic() < self._skip_until:
            raise StateUnavailable("shared state down")
        try:
            result = await self._script(args=[op, *self._head, *args])  # type: ignore[list-item]
        except store.errors as exc:
            self._skip_until = time.monotonic() + PROBE_INTERVAL
            store.mark_down(exc)
            raise StateUnavailable(type(exc).__name__) from exc
        if store.down:
            store.mark_up()
        return result

    async def admit(self, rid: str, required: Sequence[ScopeCheck], any_of: Sequence[ScopeCheck]) -> Verdict:
        args: list[Any] = [rid, len(required), len(any_of)]
        for c in (*required, *any_of):
            args += c.fields()
        out = await self._run("admit", args)
        n = len(required)
        info = [WindowInfo(*(int(v) for v in out[2 + 4 * i : 6 + 4 * i])) for i in range(n)]
        rest = out[2 + 4 * n :]
        rejections = [(int(rest[i]), KINDS[int(rest[i + 1])], int(rest[i + 2])) for i in range(0, len(rest), 3)]
        verdict = Verdict(int(out[0]), int(out[1]), info, rejections)
        if verdict.status == 0:
            taken = [*required, any_of[verdict.chosen]] if verdict.chosen >= 0 else required
            leased = [c.prefix for c in taken if c.concurrency or c.budget]
            if leased:
                self._leases[rid] = (time.monotonic(), leased)
                if self._refresher is None:
                    self._refresher = asyncio.get_running_loop().create_task(self._refresh())
        return verdict

    async def finish(self, rid: str, ends: Sequence[ScopeEnd]) -> None:
        held = self._leases.get(rid)
        if held is not None:
            left = [p for p in held[1] if all(e.prefix != p for e in ends)]
            if left:
                self._leases[rid] = (held[0], left)
            else:
                del self._leases[rid]
        args: list[Any] = [rid, len(ends)]
        for e in ends:
            args += e.fields()
        await self._run("finish", args)

    async def _refresh(self) -> None:
        """Extend the leases of long requests (streams) while they last; ends when none is left."""
        period = self.lease_ms / 3000
        try:
            while self._leases:
                await asyncio.sleep(period)
                old = time.monotonic() - period
                due = [(rid, p) for rid, (at, prefixes) in list(self._leases.items()) if at <= old for p in prefixes]
                if due:
                    with contextlib.suppress(StateUnavailable):
                        await self.touch(due)
        finally:
            self._refresher = None

    async def close(self) -> None:
        task = self._refresher
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def touch(self, leases: Sequence[tuple[str, str]]) -> None:
        args: list[Any] = [len(leases)]
        for rid, prefix in leases:
            args += [rid, prefix]
        await self._run("touch", args)

    async def snapshot(self, prefix: str, spent_key: str = "") -> dict[str, float]:
        await self._run("purge", [prefix])
        r = self.store.redis
        p = NS + prefix + ":"
        pipe = r.pipeline(transaction=False)
        for name in ("q", "ts", "c", "bs", "s:" + spent_key):
            pipe.zcard(p + name) if name in ("q", "c") else pipe.get(p + name)
        q, ts, c, bs, spent = await pipe.execute()
        return {
            "requests": int(q),
            "tokens": int(ts or 0),
            "concurrency": int(c),
            "reserved_usd": int(bs or 0) / NANO,
            "spent_usd": int(spent or 0) / NANO,
        }
