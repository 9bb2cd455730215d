"""Where the counters live: Redis (shared by every replica) or this process.

Both stores implement the same three limits over the same sliding 60 s window:

- requests per minute: a sliding-window log (one entry per admitted request, dropped 60 s
  later), exact: never more than the limit in any 60 s, however the load is spread;
- tokens per minute: a sliding-window counter (this and the previous fixed minute, the
  previous one weighted by how much of it is still inside the window); tokens are only known
  once the upstream answered, so a request is admitted while the window's count is under
  the limit and its `usage` is added when it ends;
- requests in flight: one lease per running request, released when the response ends, or
  expired after `concurrency_lease_s` if its replica died first.

`acquire` checks all three and admits the request only if all pass (atomically: one Lua
script in Redis, one round trip); `release` adds the tokens and ends the lease (in Redis:
queued, and sent with this replica's next script call, or after at most 50 ms).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.limits.script_client import ScriptClient, bulk
from proxy.limits.spec import WINDOW_MS, Limits


@dataclass(frozen=True, slots=True)
class Decision:
    denied: str  # "" (admitted), "requests", "tokens" or "concurrency"
    wait_ms: int  # when denied: until the request would be admitted
    requests_used: int  # in the window, this request included when admitted
    requests_reset_ms: int  # until the oldest request in the window leaves it
    tokens_used: int  # in the window (estimate of the sliding-window counter)
    tokens_reset_ms: int  # until every counted token has left the window
    in_flight: int


# A counter set: its key (a tenant, or a tenant on a route) and its limits.
Scope = tuple[str, Limits]


class LimitStore(Protocol):
    async def acquire(self, scopes: Sequence[Scope], member: str) -> list[Decision]:
        """Check every scope and, only when none refuses, count the request in all of them
        (one Decision per scope, in order). Raises on store errors."""
        ...

    def release(self, scopes: Sequence[Scope], member: str, amounts: Sequence[int]) -> None:
        """The request ended: add each scope's amount (tokens, or guard checks) to its
        tokens counter and end its in-flight leases (never waits: in Redis, queued for the
        next call)."""
        ...

    async def aclose(self) -> None: ...


def _token_wait(limit: int, cur: float, prev: float, into: float) -> int:
    """Milliseconds until prev*(W-x)/W + cur drops under `limit` (x: ms into this minute)."""
    if cur < limit:
        # prev * (W - x) / W + cur < limit  <=>  x > W * (1 - (limit - cur) / prev)
        return max(1, math.ceil(WINDOW_MS * (1 - (limit - cur) / prev) - into) + 1)
    # Only in the next minute, where this minute's count is the weighted previous one.
    return math.ceil(WINDOW_MS - into + WINDOW_MS * (1 - limit / cur)) + 1


class _TokenWindow:
    __slots__ = ("cur", "index", "prev")

    def __init__(self) -> None:
        self.index = 0
        self.cur = 0.0
        self.prev = 0.0

    def roll(self, index: int) -> None:
        if index == self.index:
            return
        self.prev = self.cur if index == self.index + 1 else 0.0
        self.cur = 0.0
        self.index = index


class _TenantState:
    __slots__ = ("leases", "requests", "tokens")

    def __init__(self) -> None:
        self.requests: collections.deque[float] = collections.deque()
        self.tokens = _TokenWindow()
        self.leases: dict[str, float] = {}


class LocalStore:
    """The counters of this process (no Redis configured): the same limits, per process."""

    def __init__(self, lease_ms: float) -> None:
        self._lease_ms = lease_ms
        self._tenants: dict[str, _TenantState] = {}

    @staticmethod
    def _now() -> float:
        return time.monotonic() * 1000

    async def acquire(self, scopes: Sequence[Scope], member: str) -> list[Decision]:
        now = self._now()
        states = []
        for key, _ in scopes:
            state = self._tenants.get(key)
            if state is None:
                state = self._tenants[key] = _TenantState()
            states.append(state)
        decisions = [
            self._check(state, limits, now)
            for state, (_, limits) in zip(states, scopes, strict=True)
        ]
        if any(d.denied for d in decisions):
            return decisions
        return [
            self._count(state, limits, member, now, d)
            for state, (_, limits), d in zip(states, scopes, decisions, strict=True)
        ]

    def _check(self, state: _TenantState, limits: Limits, now: float) -> Decision:
        denied, wait = "", 0
        req_used = req_reset = 0
        if limits.requests:
            log = state.requests
            while log and log[0] <= now - WINDOW_MS:
                log.popleft()
            req_used = len(log)
            if log:
                req_reset = math.ceil(log[0] + WINDOW_MS - now)
            if req_used >= limits.requests:
                denied = "requests"
                wait = math.ceil(log[req_used - limits.requests] + WINDOW_MS - now)
        tok_used = tok_reset = 0
        if limits.tokens:
            tw = state.tokens
            index = int(now // WINDOW_MS)
            tw.roll(index)
            into = now - index * WINDOW_MS
            estimate = tw.prev * (WINDOW_MS - into) / WINDOW_MS + tw.cur
            tok_used = math.ceil(estimate)
            if tw.cur > 0:
                tok_reset = math.ceil(2 * WINDOW_MS - into)
            elif tw.prev > 0:
                tok_reset = math.ceil(WINDOW_MS - into)
            if estimate >= limits.tokens and not denied:
                denied = "tokens"
                wait = _token_wait(limits.tokens, tw.cur, tw.prev, into)
        in_flight = 0
        if limits.concurrent:
            leases = state.leases
            for m in [m for m, until in leases.items() if until <= now]:
                del leases[m]
            in_flight = len(leases)
            if in_flight >= limits.concurrent and not denied:
                denied, wait = "concurrency", 1000
        return Decision(
            denied,
            max(wait, 1) if denied else 0,
            req_used,
            req_reset,
            tok_used,
            tok_reset,
            in_flight,
        )

    def _count(
        self, state: _TenantState, limits: Limits, member: str, now: float, d: Decision
    ) -> Decision:
        req_used, req_reset, in_flight = d.requests_used, d.requests_reset_ms, d.in_flight
        if limits.requests:
            state.requests.append(now)
            req_used += 1
            req_reset = req_reset or WINDOW_MS
        if limits.concurrent:
            state.leases[member] = now + self._lease_ms
            in_flight += 1
        return Decision("", 0, req_used, req_reset, d.tokens_used, d.tokens_reset_ms, in_flight)

    def in_flight(self, key: str) -> int:
        state = self._tenants.get(key)
        return 0 if state is None else len(state.leases)

    def release(self, scopes: Sequence[Scope], member: str, amounts: Sequence[int]) -> None:
        for (key, limits), tokens in zip(scopes, amounts, strict=True):
            state = self._tenants.get(key)
            if state is None:
                continue
            if tokens > 0 and limits.tokens:
                now = self._now()
                state.tokens.roll(int(now // WINDOW_MS))
                state.tokens.cur += tokens
            state.leases.pop(member, None)

    async def aclose(self) -> None:
        self._tenants.clear()


# One script does everything, so that a request costs one round trip: it first applies the
# releases this replica has queued since its last call (tokens of finished requests, ends of
# their leases), then checks the request against each of its scopes (the tenant's counters,
# and the tenant-on-this-route ones when the route has limits) and counts it in all of them
# only when none refuses (S = 0: releases only).
# ARGV: S, member, lease ms, window ms, then per scope its requests, tokens and concurrency
#       limits, then per release its tokens and member ('' when it held no lease).
# KEYS: per scope its requests log (zset), tokens window (hash), leases (zset) (one hash tag
#       per scope), then per release its tokens window and leases.
# Returns per scope: denied, wait ms, requests used, requests reset ms, tokens used, tokens
# reset ms, in flight. Time is the Redis server's own (TIME): replicas' clocks never matter.
_STEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local scopes, member = tonumber(ARGV[1]), ARGV[2]
local lease, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local idx = math.floor(now / window)
local into = now - idx * window
local function tokens_window(key)
  local h = redis.call('HMGET', key, 'w', 'cur', 'prev')
  local w, cur, prev = tonumber(h[1]) or idx, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if w == idx - 1 then prev = cur; cur = 0 elseif w ~= idx then prev = 0; cur = 0 end
  return cur, prev
end
local i = 5 + 3 * scopes
local k = 1 + 3 * scopes
while ARGV[i] do
  local tokens, done = tonumber(ARGV[i]), ARGV[i + 1]
  if tokens > 0 then
    local cur, prev = tokens_window(KEYS[k])
    redis.call('HSET', KEYS[k], 'w', idx, 'cur', cur + tokens, 'prev', prev)
    redis.call('PEXPIRE', KEYS[k], 2 * window)
  end
  if done ~= '' then redis.call('ZREM', KEYS[k + 1], done) end
  i = i + 2
  k = k + 2
end
local out = {}
local refused = false
for s = 0, scopes - 1 do
  local rpm, tpm = tonumber(ARGV[5 + 3 * s]), tonumber(ARGV[6 + 3 * s])
  local conc = tonumber(ARGV[7 + 3 * s])
  local rkey, tkey, ckey = KEYS[1 + 3 * s], KEYS[2 + 3 * s], KEYS[3 + 3 * s]
  local denied, wait = '', 0
  local req_used, req_reset = 0, 0
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rkey, '-inf', now - window)
    req_used = redis.call('ZCARD', rkey)
    if req_used > 0 then
      local oldest = redis.call('ZRANGE', rkey, 0, 0, 'WITHSCORES')
      req_reset = tonumber(oldest[2]) + window - now
    end
    if req_used >= rpm then
      local nth = redis.call('ZRANGE', rkey, req_used - rpm, req_used - rpm, 'WITHSCORES')
      denied, wait = 'requests', tonumber(nth[2]) + window - now
    end
  end
  local tok_used, tok_reset = 0, 0
  if tpm > 0 then
    local cur, prev = tokens_window(tkey)
    local est = prev * (window - into) / window + cur
    tok_used = math.ceil(est)
    if cur > 0 then tok_reset = 2 * window - into elseif prev > 0 then tok_reset = window - into end
    if est >= tpm and denied == '' then
      denied = 'tokens'
      if cur < tpm then
        wait = math.ceil(window * (1 - (tpm - cur) / prev) - into) + 1
      else
        wait = math.ceil(window - into + window * (1 - tpm / cur)) + 1
      end
    end
  end
  local in_flight = 0
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)
    in_flight = redis.call('ZCARD', ckey)
    if in_flight >= conc and denied == '' then denied, wait = 'concurrency', 1000 end
  end
  if denied ~= '' then refused = true end
  local base = 7 * s
  out[base + 1], out[base + 2] = denied, math.max(math.ceil(wait), 1)
  out[base + 3], out[base + 4] = req_used, math.ceil(req_reset)
  out[base + 5], out[base + 6], out[base + 7] = tok_used, math.ceil(tok_reset), in_flight
end
if not refused then
  for s = 0, scopes - 1 do
    local base = 7 * s
    out[base + 2] = 0
    if tonumber(ARGV[5 + 3 * s]) > 0 then
      redis.call('ZADD', KEYS[1 + 3 * s], now, member)
      redis.call('PEXPIRE', KEYS[1 + 3 * s], window)
      out[base + 3] = out[base + 3] + 1
      if out[base + 4] == 0 then out[base + 4] = window end
    end
    if tonumber(ARGV[7 + 3 * s]) > 0 then
      redis.call('ZADD', KEYS[3 + 3 * s], now + lease, member)
      redis.call('PEXPIRE', KEYS[3 + 3 * s], lease)
      out[base + 7] = out[base + 7] + 1
    end
  end
end
return out
"""

# Releases queued at most this long before they go out on their own (normally the next
# request's call takes them along first); at most this many per call.
FLUSH_DELAY_S = 0.05
MAX_BATCH = 64
MAX_QUEUED = 100_000  # Redis down for long: the oldest releases are dropped (leases expire)


@dataclass(frozen=True, slots=True)
class _PackedScope:
    """A scope's parts of the script call, packed once (RESP bulks): they repeat every call."""

    keys: bytes  # its requests log, tokens window and leases keys
    limits: bytes  # its requests, tokens and concurrency limits
    release_keys: bytes  # its tokens window and leases keys (a release of this scope)


# A queued release: its scope's packed keys, its tokens, its member's lease to end ('' none),
# and when it was queued (event loop time).
_Release = tuple[bytes, int, str, float]

MAX_PACKED_SCOPES = 10_000  # scopes come from the config; a bound all the same


class RedisStore:
    """Counters in Redis, shared by every replica: one script call (EVALSHA) per request.

    `release` only queues: the next `acquire` on this replica sends the queued releases in the
    same script call, before its own check (so a finished request's slot and tokens count for
    it), and a timer sends them alone after FLUSH_DELAY_S when no request came meanwhile. Calls
    are short-timed and never retried: an unreachable Redis fails the call fast and the caller
    applies `on_redis_error`; releases that could not be sent are queued again. A failed
    connection is replaced on a later call: recovery needs nothing. The call itself is packed
    from cached bytes and sent over a lean client (proxy/limits/script_client.py).
    """

    def __init__(self, url: str, *, prefix: str, timeout_s: float, lease_ms: float) -> None:
        self._client = ScriptClient(url, _STEP, timeout_s=timeout_s)
        self._prefix = prefix
        self._fixed_args = bulk(b"%d" % int(lease_ms)) + bulk(b"%d" % WINDOW_MS)
        self._packed: dict[Scope, _PackedScope] = {}
        self._queued: collections.deque[_Release] = collections.deque()
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    def _pack(self, scope: Scope) -> _PackedScope:
        packed = self._packed.get(scope)
        if packed is None:
            key, limits = scope
            base = f"{self._prefix}:{{{key}}}".encode()
            tok, inflight = bulk(base + b":tok"), bulk(base + b":inflight")
            packed = _PackedScope(
                keys=bulk(base + b":req") + tok + inflight,
                limits=b"".join(
                    bulk(b"%d" % n) for n in (limits.requests, limits.tokens, limits.concurrent)
                ),
                release_keys=tok + inflight,
            )
            if len(self._packed) >= MAX_PACKED_SCOPES:
                self._packed.clear()
            self._packed[scope] = packed
        return packed

    def _take(self) -> list[_Release]:
        n = min(len(self._queued), MAX_BATCH)
        return [self._queued.popleft() for _ in range(n)]

    def _requeue(self, batch: list[_Release]) -> None:
        self._queued.extendleft(reversed(batch))
        while len(self._queued) > MAX_QUEUED:
            self._queued.pop()

    async def _call(self, scopes: Sequence[Scope], member: str, batch: list[_Release]) -> Any:
        packed = [self._pack(scope) for scope in scopes]
        # KEYS: per scope 3, per release 2; ARGV: 4, per scope 3, per release 2.
        parts = [p.keys for p in packed]
        parts += [keys for keys, _, _, _ in batch]
        parts += (bulk(b"%d" % len(scopes)), bulk(member.encode()), self._fixed_args)
        parts += [p.limits for p in packed]
        for _, tokens, done, _ in batch:
            parts += (bulk(b"%d" % tokens), bulk(done.encode()))
        count = 6 * len(scopes) + 4 * len(batch) + 4
        try:
            return await self._client.run(count, 3 * len(scopes) + 2 * len(batch), b"".join(parts))
        except BaseException:
            self._requeue(batch)
            raise

    async def acquire(self, scopes: Sequence[Scope], member: str) -> list[Decision]:
        out = await self._call(scopes, member, self._take())
        decisions = []
        for s in range(len(scopes)):
            v = out[7 * s : 7 * s + 7]
            denied = v[0].decode() if isinstance(v[0], bytes) else str(v[0])
            decisions.append(
                Decision(denied, int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]))
            )
        return decisions

    def release(self, scopes: Sequence[Scope], member: str, amounts: Sequence[int]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for scope, tokens in zip(scopes, amounts, strict=True):
            limits = scope[1]
            self._queued.append(
                (
                    self._pack(scope).release_keys,
                    tokens if limits.tokens else 0,
                    member if limits.concurrent else "",
                    now,
                )
            )
        if self._flush is None:
            self._flush = loop.call_later(FLUSH_DELAY_S, self._start_flush)

    def _start_flush(self) -> None:
        self._flush = None
        if not self._queued:
            return
        loop = asyncio.get_running_loop()
        due = self._queued[0][3] + FLUSH_DELAY_S
        if due > loop.time() + 0.001:  # (timers may fire a hair early)
            # The releases this timer was set for went out with a request meanwhile; the
            # oldest one left is younger: wait for its own deadline, not flush it early (under
            # steady traffic every release then rides with a request, none costs a call).
            self._flush = loop.call_at(due, self._start_flush)
        elif self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Send every queued release now (releases only: no request is counted)."""
        while self._queued:
            try:
                await self._call((), "", self._take())
            except Exception:
                if self._flush is None:  # Redis down: try again later, not in a loop
                    loop = asyncio.get_running_loop()
                    self._flush = loop.call_later(1.0, self._start_flush)
                return

    @property
    def queued(self) -> int:
        return len(self._queued)

    async def ping(self) -> bool:
        return await self._client.ping()

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        with contextlib.suppress(Exception):
            await self.flush()
        await self._client.aclose()
