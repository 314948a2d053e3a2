"""`Counters` on Redis: the algorithm of `MemoryCounters`, as one Lua script.

The script is sent once and then called with EVALSHA on the store's pipelined
connection (`RedisStore.fast`); after a Redis restart emptied the script cache, the
NOSCRIPT answer sends it again once. One call admits a request in every scope (or in
none); one call settles it. Time is Redis's
own clock (`TIME`), so replicas with skewed clocks still share one window.

Keys live under `relaygate:lim:<scope>:` (scope `k:<key>`, `r:<route>`, `p:<provider>`) and
expire on their own once a scope is idle. One script touches every scope of a request, so
the scopes must live on one Redis node: a single Redis (with replicas for failover) serves;
Redis Cluster does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from asyncio import get_running_loop
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ..state import StateUnavailable
from ..state.resp import RespConnectionError, RespError, encode
from .windows import KINDS, LEASE_MS, NANO, NO_BUDGET, WINDOW_MS, Counters, ScopeCheck, ScopeEnd, Verdict

if TYPE_CHECKING:
    from ..state import RedisStore

log = logging.getLogger("relaygate.limits")
NS = "relaygate:lim:"
#: After a failed call, requests skip Redis (and get `on_error` at once) for this long,
#: so a dead or black-holed Redis costs one timeout per interval, not one per request.
PROBE_INTERVAL = 0.5
_OPS = ("batch", "settle", "admit", "touch", "peek")

SCRIPT = r"""
-- relaygate limits: admission and settlement over every scope of a request, atomically.
-- Per scope p (prefix "relaygate:lim:<scope>:"):
--   p..'w'  ZSET  admissions in the window (member: reservation id, score: ms); rpm counts them
--   p..'h'  HASH  reservation id -> tokens; '#' token sum; '+' excess entries; '@' next TTL refresh
--   p..'c'  ZSET  concurrency leases (score: lease end)
--   p..'b'  ZSET  budget reservation leases;  p..'bh' HASH id -> nano-USD, '#' their sum
--   p..'s:'..period  STRING  nano-USD spent in that budget period
local op = ARGV[1]
local W = tonumber(ARGV[2])
local LEASE = tonumber(ARGV[3])
local NS = ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local horizon = '(' .. (now - W)

local function split(s)
  local out, i = {}, 1
  while true do
    local j = string.find(s, '\0', i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end

-- HMGET + HDEL of `members` in hash `key`, in chunks (unpack has a stack limit): their sum.
local function take_sum(key, members)
  local s = 0
  for i = 1, #members, 500 do
    local chunk = {unpack(members, i, math.min(i + 499, #members))}
    for _, v in ipairs(redis.call('HMGET', key, unpack(chunk))) do
      if v then s = s + tonumber(v) end
    end
    redis.call('HDEL', key, unpack(chunk))
  end
  return s
end

-- A batch's fields (ARGV[6], NUL-separated): one string is far cheaper to send than many.
local A = {}
-- A scope of an admission, 9 fields from A[i]: prefix rpm tpm conc tokens budget spent_key cost period_left
local scopes = {}
local function read(i)
  local f = scopes[i]
  if not f then
    f = {p = NS .. A[i] .. ':', rpm = tonumber(A[i + 1]), tpm = tonumber(A[i + 2]), conc = tonumber(A[i + 3]),
         tokens = tonumber(A[i + 4]), budget = tonumber(A[i + 5]), spent_key = A[i + 6], cost = tonumber(A[i + 7]),
         left = tonumber(A[i + 8])}
    scopes[i] = f
  end
  return f
end

-- Each scope's state as of `now` (admissions in the window, their tokens, leases in
-- flight, budget reserved and spent), read once per script run and kept current by `take`:
-- `now` does not move within a run, so a batch's later admissions to a scope need not purge
-- or read it again. (A batch's settlements all run before its first admission reads one.)
local states = {}

-- Drop what has left the window (or whose lease ran out), once per run; the scope's state.
local function state(f)
  local p = f.p
  local s = states[p]
  if not s then s = {spent = {}, kept = {}}; states[p] = s end
  if f.tpm > 0 and not s.tokens_read then
    local old = redis.call('ZRANGEBYSCORE', p .. 'w', '-inf', horizon)
    local freed, extra = 0, 0
    if #old > 0 then
      for _, m in ipairs(old) do if string.sub(m, -1) == '+' then extra = extra + 1 end end
      freed = take_sum(p .. 'h', old)
      redis.call('ZREMRANGEBYSCORE', p .. 'w', '-inf', horizon)
    end
    local h = redis.call('HMGET', p .. 'h', '#', '+', '@')
    s.used = math.max((tonumber(h[1]) or 0) - freed, 0)
    s.excess = math.max((tonumber(h[2]) or 0) - extra, 0)
    s.refresh = tonumber(h[3]) or 0
    if #old > 0 then redis.call('HSET', p .. 'h', '#', s.used, '+', s.excess) end
    s.n = redis.call('ZCARD', p .. 'w') - s.excess
    s.tokens_read, s.window_read = true, true
  elseif f.rpm > 0 and not s.window_read then
    redis.call('ZREMRANGEBYSCORE', p .. 'w', '-inf', horizon)
    s.n = redis.call('ZCARD', p .. 'w')
    s.window_read = true
  end
  if f.conc > 0 and not s.inflight then
    redis.call('ZREMRANGEBYSCORE', p .. 'c', '-inf', now)
    s.inflight = redis.call('ZCARD', p .. 'c')
  end
  if f.budget > 0 then
    if not s.reserved then
      local gone = redis.call('ZRANGEBYSCORE', p .. 'b', '-inf', now)
      local freed = 0
      if #gone > 0 then
        freed = take_sum(p .. 'bh', gone)
        redis.call('ZREMRANGEBYSCORE', p .. 'b', '-inf', now)
      end
      s.reserved = math.max(tonumber(redis.call('HGET', p .. 'bh', '#') or '0') - freed, 0)
      if freed > 0 then redis.call('HSET', p .. 'bh', '#', s.reserved) end
    end
    if not s.spent[f.spent_key] then
      s.spent[f.spent_key] = tonumber(redis.call('GET', p .. 's:' .. f.spent_key) or '0')
    end
  end
  return s
end

-- When the k-th oldest admission (1-based, excess entries skipped) leaves the window.
local function leaves(p, k)
  local start, seen = 0, 0
  while true do
    local e = redis.call('ZRANGE', p .. 'w', start, start + 99, 'WITHSCORES')
    if #e == 0 then return W end
    for i = 1, #e, 2 do
      if string.sub(e[i], -1) ~= '+' then
        seen = seen + 1
        if seen >= k then return tonumber(e[i + 1]) + W + 1 - now end
      end
    end
    start = start + 100
  end
end

-- When enough tokens leave the window for `need` more to fit.
local function tokens_free(p, need)
  local start = 0
  while need > 0 do
    local e = redis.call('ZRANGE', p .. 'w', start, start + 99, 'WITHSCORES')
    if #e == 0 then break end
    local members = {}
    for i = 1, #e, 2 do members[#members + 1] = e[i] end
    local vals = redis.call('HMGET', p .. 'h', unpack(members))
    for i = 1, #members do
      need = need - tonumber(vals[i] or '0')
      if need <= 0 then return tonumber(e[2 * i]) + W + 1 - now end
    end
    start = start + 100
  end
  return W
end

local function check(f, s, index, rej)
  local ok = true
  if f.rpm > 0 and s.n >= f.rpm then
    rej[#rej + 1] = index; rej[#rej + 1] = 1; rej[#rej + 1] = leaves(f.p, s.n - f.rpm + 1)
    ok = false
  end
  if f.tpm > 0 and s.used + f.tokens > f.tpm then
    local wait = W
    if f.tokens <= f.tpm then wait = tokens_free(f.p, s.used + f.tokens - f.tpm) end
    rej[#rej + 1] = index; rej[#rej + 1] = 2; rej[#rej + 1] = wait
    ok = false
  end
  if f.conc > 0 and s.inflight >= f.conc then
    rej[#rej + 1] = index; rej[#rej + 1] = 3; rej[#rej + 1] = 1000
    ok = false
  end
  if f.budget > 0 and s.spent[f.spent_key] + s.reserved + f.cost > f.budget then
    rej[#rej + 1] = index; rej[#rej + 1] = 4; rej[#rej + 1] = f.left
    ok = false
  end
  return ok
end

-- Push a key's expiry back, once per run (`s.kept` remembers which were).
local function keep(s, key, ms)
  if not s.kept[key] then
    redis.call('PEXPIRE', key, ms)
    s.kept[key] = true
  end
end

-- Reserve in one scope; the keys' expiries are pushed back once per run, not per admission.
local function take(f, s, rid)
  local p = f.p
  if f.rpm > 0 or f.tpm > 0 then
    redis.call('ZADD', p .. 'w', now, rid)
    s.n = (s.n or 0) + 1
    if s.oldest == false then s.oldest = now end
    if f.tpm > 0 then
      s.used = s.used + f.tokens
      redis.call('HSET', p .. 'h', rid, f.tokens, '#', s.used)
      if now >= s.refresh then  -- idle scopes vanish on their own; refreshed once a second, not per call
        redis.call('PEXPIRE', p .. 'w', W + 2000)
        redis.call('PEXPIRE', p .. 'h', W + 2000)
        redis.call('HSET', p .. 'h', '@', now + 1000)
        s.refresh = now + 1000
      end
    else
      keep(s, p .. 'w', W + 2000)
    end
  end
  if f.conc > 0 then
    redis.call('ZADD', p .. 'c', now + LEASE, rid)
    s.inflight = s.inflight + 1
    keep(s, p .. 'c', LEASE + 1000)
  end
  if f.budget > 0 then
    s.reserved = s.reserved + f.cost
    redis.call('ZADD', p .. 'b', now + LEASE, rid)
    redis.call('HSET', p .. 'bh', rid, f.cost, '#', s.reserved)
    keep(s, p .. 'b', LEASE + 1000)
    keep(s, p .. 'bh', LEASE + 1000)
  end
end

-- One request's admission (from A[pos]: id, nreq, nany, then 9 fields per scope); its reply
-- is appended to `out`: status, chosen, the number of rejections, 4 numbers per required
-- scope, 3 per rejection.
local function admit_one(pos, out)
  local rid = A[pos]
  local nreq, nany = tonumber(A[pos + 1]), tonumber(A[pos + 2])
  local base = pos + 3
  for k = 0, nreq + nany - 1 do state(read(base + 9 * k)) end
  local rej = {}
  local ok = true
  for k = 0, nreq - 1 do
    local f = read(base + 9 * k)
    if not check(f, states[f.p], k, rej) then ok = false end
  end
  local status, chosen = 0, -1
  if not ok then status = 1 end
  if ok and nany > 0 then
    for k = 0, nany - 1 do
      local f = read(base + 9 * (nreq + k))
      if check(f, states[f.p], nreq + k, rej) then chosen = k; break end
    end
    if chosen < 0 then status = 2 end
  end
  if status == 0 then
    for k = 0, nreq - 1 do
      local f = read(base + 9 * k)
      take(f, states[f.p], rid)
    end
    if chosen >= 0 then
      local f = read(base + 9 * (nreq + chosen))
      take(f, states[f.p], rid)
    end
  end
  local res = {status, chosen, #rej / 3}
  for k = 0, nreq - 1 do
    local f = read(base + 9 * k)
    local s = states[f.p]
    local a, b, c, d = -1, -1, -1, -1
    if f.rpm > 0 or f.tpm > 0 then
      if s.oldest == nil then  -- the window's oldest admission, read once per run
        local e = redis.call('ZRANGE', f.p .. 'w', 0, 0, 'WITHSCORES')
        s.oldest = #e > 0 and tonumber(e[2])
      end
      local reset = 0
      if s.oldest then reset = s.oldest + W + 1 - now end
      if f.rpm > 0 then a = math.max(f.rpm - s.n, 0); b = reset end
      if f.tpm > 0 then c = math.max(f.tpm - s.used, 0); d = reset end
    end
    res[#res + 1] = a; res[#res + 1] = b; res[#res + 1] = c; res[#res + 1] = d
  end
  for _, v in ipairs(rej) do res[#res + 1] = v end
  for _, v in ipairs(res) do out[#out + 1] = v end
  return base + 9 * (nreq + nany)
end

-- One request's settlement (or release) in each of its scopes (from A[pos]: id, n, then 11
-- fields per scope: mode prefix rpm tpm conc tokens estimate budget spent_key cost ttl, where
-- rpm, tpm, conc and budget say only whether the scope has that limit: > 0).
local function finish_one(pos)
  local rid = A[pos]
  local n = tonumber(A[pos + 1])
  for k = 0, n - 1 do
    local i = pos + 2 + 11 * k
    local release, p = A[i] == 'r', NS .. A[i + 1] .. ':'
    local rpm, tpm, conc = A[i + 2] ~= '0', A[i + 3] ~= '0', A[i + 4] ~= '0'
    local tokens, estimate, budget = tonumber(A[i + 5]), tonumber(A[i + 6]), A[i + 7] ~= '0'
    local spent_key, cost, ttl = A[i + 8], tonumber(A[i + 9]), tonumber(A[i + 10])
    if tpm then
      local h = redis.call('HMGET', p .. 'h', rid, '#', '+')
      local sum = tonumber(h[2]) or 0
      if h[1] then
        if release then
          redis.call('HDEL', p .. 'h', rid)
          redis.call('HSET', p .. 'h', '#', math.max(sum - tonumber(h[1]), 0))
        else
          redis.call('HSET', p .. 'h', rid, tokens, '#', math.max(sum + tokens - tonumber(h[1]), 0))
        end
      elseif not release and tokens > estimate then  -- its minute is over: the excess counts from now
        redis.call('ZADD', p .. 'w', now, rid .. '+')
        redis.call('HSET', p .. 'h', rid .. '+', tokens - estimate, '#', sum + tokens - estimate,
                   '+', (tonumber(h[3]) or 0) + 1)
        redis.call('PEXPIRE', p .. 'w', W + 2000)
        redis.call('PEXPIRE', p .. 'h', W + 2000)
      end
    end
    if release and (rpm or tpm) then redis.call('ZREM', p .. 'w', rid) end
    if conc then redis.call('ZREM', p .. 'c', rid) end
    if budget then
      local h = redis.call('HMGET', p .. 'bh', rid, '#')
      if h[1] then
        redis.call('ZREM', p .. 'b', rid)
        redis.call('HDEL', p .. 'bh', rid)
        redis.call('HSET', p .. 'bh', '#', math.max((tonumber(h[2]) or 0) - tonumber(h[1]), 0))
      end
      if not release and cost > 0 then
        local key = p .. 's:' .. spent_key
        redis.call('INCRBY', key, cost)
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      end
    end
  end
  return pos + 2 + 11 * n
end

-- A batch: the settlements (ARGV[5] of them, their text in ARGV[6]) and the admissions
-- (ARGV[7], ARGV[8]) asked within one event-loop turn of one process, in order, each as
-- atomic as if alone (a script runs without interleaving); settlements first, so that
-- what they free is there for the admissions.
-- ('settle' and 'admit' carry one side only, in ARGV[5] and ARGV[6].)
if op == 'batch' or op == 'settle' or op == 'admit' then
  local out = {}
  local settled, settle_text, admitted, admit_text = 0, '', 0, ''
  if op == 'batch' then
    settled, settle_text, admitted, admit_text = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
  elseif op == 'settle' then
    settled, settle_text = tonumber(ARGV[5]), ARGV[6]
  else
    admitted, admit_text = tonumber(ARGV[5]), ARGV[6]
  end
  if settled > 0 then
    A = split(settle_text)
    local pos = 1
    for _ = 1, settled do pos = finish_one(pos) end
  end
  if admitted > 0 then
    A = split(admit_text)
    local pos = 1
    for _ = 1, admitted do pos = admit_one(pos, out) end
  end
  -- The admissions' replies as one string of little-endian 64-bit integers: the gateway
  -- reads them all in one call, far cheaper than an array of numbers or their decimal text.
  for i, v in ipairs(out) do out[i] = struct.pack('<i8', v) end
  return table.concat(out)
end

-- Extend the leases of reservations still in flight: ARGV[5] pairs of (id, scope).
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
  end
  return 1
end

-- A scope's counters as of now (tests, debugging): requests, tokens, in flight, reserved nano-USD, spent.
if op == 'peek' then
  local f = {p = NS .. ARGV[5] .. ':', rpm = 1, tpm = 1, conc = 1, budget = 1, spent_key = ARGV[6]}
  local s = state(f)
  return {s.n, s.used, s.inflight, s.reserved, s.spent[f.spent_key]}
end
return redis.error_reply('relaygate limits: unknown op ' .. tostring(op))
"""


_Admit = tuple[str, Sequence[ScopeCheck], Sequence[ScopeCheck], "asyncio.Future[Verdict]"]
_Done = Callable[[Any, BaseException | None], None]
_COUNTS = tuple(str(n) for n in range(16))  # a request's scopes as text, without formatting an int


class RedisCounters(Counters):
    """One EVALSHA per admission and one per settlement, or fewer: the calls made within
    one event-loop turn leave as one batch (one script run, one reply), which is what
    keeps a busy gateway's cost per request low."""

    def __init__(self, store: RedisStore, window_ms: int = WINDOW_MS, lease_ms: int = LEASE_MS) -> None:
        super().__init__(window_ms, lease_ms)
        self.store = store
        self._client = store.fast
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._head = [window_ms, lease_ms, NS]
        # "EVALSHA sha 0 op window lease ns", encoded once per op (7 of each call's arguments)
        self._heads = {op: encode(["EVALSHA", self._sha, 0, op, *self._head])[len(b"*7\r\n") :] for op in _OPS}
        self._skip_until = 0.0
        self._admits: list[_Admit] = []  # the next batch's admissions, and their text
        self._admit_text: list[str] = []
        self._finish_text: list[str] = []  # the next batch's settlements, as text
        self._finish_count = 0
        self._finish_waiters: list[asyncio.Future[None]] = []  # awaited `finish` calls of the next batch
        self._sending = False  # a loop turn's batch is scheduled
        #: Reservations of this process holding leases: rid -> (taken at, scope prefixes).
        self._leases: dict[str, tuple[float, list[str]]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    # -------------------------------------------------------------- calls

    def _skipping(self) -> bool:
        """While Redis is down, most requests do not wait for it (one probe per interval does)."""
        return self.store.down and time.monotonic() < self._skip_until

    def _failed(self, exc: BaseException) -> StateUnavailable:
        self._skip_until = time.monotonic() + PROBE_INTERVAL
        self.store.mark_down(exc)
        return StateUnavailable(type(exc).__name__)

    async def _run(self, op: str, args: list[Any]) -> Any:
        if self._skipping():
            raise StateUnavailable("shared state down")
        try:
            try:
                result = await self._client.call_with(self._heads[op], 7, args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                result = await self._client.call("EVAL", SCRIPT, 0, op, *self._head, *args)  # caches it again
        except self.store.errors as exc:
            raise self._failed(exc) from exc
        if self.store.down:
            self.store.mark_up()
        return result

    def _submit(self, op: str, args: list[Any], done: _Done) -> None:
        """Send one batch (`args`: counts and their text) without a task or a future when the
        connection is open; `done(result, error)`."""
        conn = self._client.ready()
        if conn is None or self.store.down:  # connecting, or probing: the awaited path
            self._awaited(op, args, done)
            return
        n, data = b"%d" % args[0], args[1].encode()
        if len(args) == 2:
            payload = b"*9\r\n%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (self._heads[op], len(n), n, len(data), data)
        else:
            n2, data2 = b"%d" % args[2], args[3].encode()
            payload = b"*11\r\n%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                self._heads[op], len(n), n, len(data), data, len(n2), n2, len(data2), data2)  # fmt: skip
        try:
            conn.send_now(payload, partial(self._replied, op, args, done))
        except RespConnectionError:  # closed since `ready`: the awaited path reconnects
            self._awaited(op, args, done)

    def _replied(self, op: str, args: list[Any], done: _Done, result: Any) -> None:
        if not isinstance(result, BaseException):
            done(result, None)
        elif isinstance(result, RespError) and str(result).startswith("NOSCRIPT"):  # Redis restarted: send the script
            self._awaited(op, args, done)
        elif isinstance(result, self.store.errors):
            done(None, self._failed(result))
        else:
            done(None, result)

    def _awaited(self, op: str, args: list[Any], done: _Done) -> None:
        """`_run` in a task of its own (it connects, or sends the script), reporting to `done`."""

        def report(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                done(None, StateUnavailable("closed"))
            elif task.exception() is not None:
                done(None, task.exception())
            else:
                done(task.result(), None)

        task = asyncio.ensure_future(self._run(op, args))
        self._tasks.add(task)
        task.add_done_callback(report)

    def _schedule(self) -> None:
        """Send this loop turn's settlements and admissions once the turn's callbacks have run."""
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        """This loop turn's settlements and admissions, as one call."""
        self._sending = False
        settled, admitted = self._finish_count, len(self._admits)
        if settled:
            self._finish_count = 0
            settle_text, self._finish_text = "\0".join(self._finish_text), []
            waiters, self._finish_waiters = self._finish_waiters, []
        if admitted:
            batch, self._admits = self._admits, []
            admit_text, self._admit_text = "\0".join(self._admit_text), []
        if settled and admitted:
            self._submit("batch", [settled, settle_text, admitted, admit_text],
                         partial(self._sent, batch, waiters, settled))  # fmt: skip
        elif admitted:
            self._submit("admit", [admitted, admit_text], partial(self._admitted, batch))
        elif settled:
            self._submit("settle", [settled, settle_text], partial(self._settled, waiters, settled))

    def _sent(self, batch: list[_Admit], waiters: list[asyncio.Future[None]], settled: int, reply: Any,
              exc: BaseException | None) -> None:  # fmt: skip
        self._settled(waiters, settled, reply, exc)
        self._admitted(batch, reply, exc)

    def _settled(self, waiters: list[asyncio.Future[None]], settled: int, _reply: Any,
                 exc: BaseException | None) -> None:  # fmt: skip
        if isinstance(exc, StateUnavailable):
            log.debug("%d settlements were dropped: shared state down (their leases lapse)", settled)
        for fut in waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    # -------------------------------------------------------------- admit

    def admit(self, rid: str, required: Sequence[ScopeCheck], any_of: Sequence[ScopeCheck]) -> asyncio.Future[Verdict]:
        if self.store.down and self._skipping():
            raise StateUnavailable("shared state down")
        fut: asyncio.Future[Verdict] = get_running_loop().create_future()
        self._admits.append((rid, required, any_of, fut))
        n, m = len(required), len(any_of)
        text = self._admit_text
        if n == 1 and not m and required[0].head and not required[0].budget:  # one scope: `wire`, inline
            c = required[0]
            text.append(f"{rid}\0" "1\0" "0\0" f"{c.head}{c.tokens}\0{NO_BUDGET}")
        else:
            text.append(f"{rid}\0{_COUNTS[n] if n < 16 else n}\0{_COUNTS[m] if m < 16 else m}")
            for c in required:
                text.append(c.wire())
            for c in any_of:
                text.append(c.wire())
        if not self._sending:
            self._sending = True
            get_running_loop().call_soon(self._send)
        return fut

    def _admitted(self, batch: list[_Admit], reply: Any, exc: BaseException | None) -> None:
        if exc is not None:
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        # Per request: status, chosen, rejections, 4 per required scope (the Verdict reads them
        # where they are), 3 per rejection.
        out = struct.unpack(f"<{len(reply) >> 3}q", reply)
        pos = 0
        for rid, required, any_of, fut in batch:
            status, chosen, refused = out[pos : pos + 3]
            at = pos + 3
            pos = at + 4 * len(required)
            rejections = []
            if refused:
                for _ in range(refused):
                    rejections.append((out[pos], KINDS[out[pos + 1]], out[pos + 2]))
                    pos += 3
            if fut.done():  # the caller was cancelled (client gone) before the answer: give it all back
                if status == 0:
                    self.settle(rid, [*required, any_of[chosen]] if chosen >= 0 else required, True, 0)
                continue
            if status == 0:
                leased: list[str] | None = None
                for c in required:
                    if c.concurrency or c.budget:
                        leased = [*(leased or ()), c.prefix]
                if chosen >= 0 and (any_of[chosen].concurrency or any_of[chosen].budget):
                    leased = [*(leased or ()), any_of[chosen].prefix]
                if leased:
                    self._leases[rid] = (time.monotonic(), leased)
                    if self._refresher is None:
                        self._refresher = get_running_loop().create_task(self._refresh())
            fut.set_result(Verdict(status, chosen, None, rejections, out, at, len(required)))

    # -------------------------------------------------------------- finish

    async def finish(self, rid: str, ends: Sequence[ScopeEnd]) -> None:
        if self._skipping():
            raise StateUnavailable("shared state down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._finish_waiters.append(fut)
        self.settle_soon([(rid, ends)])
        await fut

    def _unlease(self, rid: str, prefixes: Sequence[str]) -> None:
        """Stop renewing the leases `rid` held in these scopes."""
        held = self._leases.get(rid)
        if held is not None:
            left = [p for p in held[1] if p not in prefixes]
            if left:
                self._leases[rid] = (held[0], left)
            else:
                del self._leases[rid]

    def settle_soon(self, items: Sequence[tuple[str, Sequence[ScopeEnd]]]) -> None:
        if self._skipping():
            log.debug("a settlement was dropped: shared state down (its leases lapse)")
            return
        text = self._finish_text
        for rid, ends in items:
            if self._leases:
                self._unlease(rid, [e.prefix for e in ends])
            text.append(f"{rid}\0{len(ends)}")
            for e in ends:
                text.append(e.wire())
        self._finish_count += len(items)
        self._schedule()

    def settle(self, rid: str, checks: Sequence[ScopeCheck], release: bool, tokens: int, cost: int = 0,
               spent: tuple[str, int] = ("", 0)) -> None:  # fmt: skip
        if self.store.down and self._skipping():
            log.debug("a settlement was dropped: shared state down (its leases lapse)")
            return
        if self._leases:
            self._unlease(rid, [c.prefix for c in checks])
        n = len(checks)
        text = self._finish_text
        mode = "r\0" if release else "s\0"
        if n == 1 and checks[0].head and not checks[0].budget:  # one scope: as below, in one string
            c = checks[0]
            text.append(f"{rid}\0" "1\0" f"{mode}{c.head}{tokens}\0{c.tokens}\0{NO_BUDGET}")
        else:
            text.append(f"{rid}\0{_COUNTS[n] if n < 16 else n}")
            for c in checks:
                head = c.head or f"{c.prefix}\0{c.rpm}\0{c.tpm}\0{c.concurrency}\0"
                if c.budget:
                    text.append(f"{mode}{head}{tokens}\0{c.tokens}\0{c.budget}\0{spent[0]}\0{cost}\0{spent[1]}")
                else:  # as `end_wire`, inline: this runs for every request
                    text.append(f"{mode}{head}{tokens}\0{c.tokens}\0{NO_BUDGET}")
        self._finish_count += 1
        if not self._sending:
            self._sending = True
            get_running_loop().call_soon(self._send)

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
        for pending in (self._refresher, *self._tasks):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StateUnavailable):
                    await pending

    async def touch(self, leases: Sequence[tuple[str, str]]) -> None:
        args: list[Any] = [len(leases)]
        for rid, prefix in leases:
            args += [rid, prefix]
        await self._run("touch", args)

    async def snapshot(self, prefix: str, spent_key: str = "") -> dict[str, float]:
        requests, tokens, inflight, reserved, spent = await self._run("peek", [prefix, spent_key])
        return {
            "requests": requests,
            "tokens": tokens,
            "concurrency": inflight,
            "reserved_usd": reserved / NANO,
            "spent_usd": spent / NANO,
        }
