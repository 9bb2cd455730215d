"""The shared tier of the verdict cache: verdicts in Redis, so that every replica reuses them.

It sits behind the in-process LRU (guard_engine.cache.VerdictCache): a lookup asks Redis only
when the LRU missed, with one GET; a new verdict is written with one SET ... PX in a
background task, so no response ever waits for Redis. Redis holds `<prefix>:<key>` -> the
verdict's labels, categories, score, the guard's short answer and its expiry, where `<key>` is
`cache_key`'s sha256 digest of what was checked: never prompt or response text. THINK
verdicts are not shared: a reasoning trace may quote the prompt.

Redis down or slow is a miss, never a failure: every call is capped by `timeout_s`, counted,
and the first failure of an outage is logged (once; the recovery too). After a failure Redis
is left alone for `RETRY_AFTER_S`, so an outage costs one timeout per second, not one per
request; then the next lookup tries again and recovery needs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from guard_engine.types import Verdict

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0  # after a failure, Redis is skipped (a miss) this long
MAX_PENDING_WRITES = 1000  # writes in flight beyond this are dropped (counted): Redis is slow
_FORMAT = 1  # bumped when the stored value's layout changes


class RedisVerdictTier:
    """Verdicts shared through Redis (redis.asyncio). Counters in `counts`:

    lookups: hit, miss, unavailable (error, timeout, or skipped while Redis is down);
    writes: stored, failed, dropped (too many pending, or called off the event loop). Verdicts
    that are not shareable, and writes while Redis is down, are not attempted nor counted.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ttl_s: float,
        timeout_s: float,
        retry_after_s: float = RETRY_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError("ttl_s and timeout_s must be > 0")
        # No client-side retries and short socket timeouts: a failure is a miss at once.
        self._redis: Any = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            decode_responses=False,
        )
        self._prefix = prefix
        self._ttl_ms = int(ttl_s * 1000)
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._clock = clock  # wall clock: expiries are compared across replicas
        self._down_until = 0.0  # monotonic; while in the future, Redis is not asked
        self._failing = False
        self._pending: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = dict.fromkeys(
            ("hit", "miss", "unavailable", "stored", "failed", "dropped"), 0
        )

    def _redis_key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def get(self, key: str) -> tuple[Verdict, float] | None:
        """(verdict, seconds it still lives) or None: absent, expired, unreadable or Redis
        unavailable. The verdict is marked `cache_hit=True`."""
        if time.monotonic() < self._down_until:
            self.counts["unavailable"] += 1
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self._redis.get(self._redis_key(key))
        except Exception as exc:  # any Redis or socket error: a miss, never a failure
            self._failed("lookup", exc)
            self.counts["unavailable"] += 1
            return None
        self._recovered()
        found = _decode(raw, now=self._clock()) if raw is not None else None
        self.counts["hit" if found is not None else "miss"] += 1
        return found

    def put(self, key: str, verdict: Verdict) -> None:
        """Share a verdict, in the background (never awaited by the request)."""
        if not shareable(verdict) or time.monotonic() < self._down_until:
            return
        if len(self._pending) >= MAX_PENDING_WRITES:
            self.counts["dropped"] += 1
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called off the event loop (a worker thread): not shared
            self.counts["dropped"] += 1
            return
        value = _encode(verdict, expires=self._clock() + self._ttl_ms / 1000)
        task = loop.create_task(self._write(self._redis_key(key), value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, redis_key: str, value: bytes) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.set(redis_key, value, px=self._ttl_ms)
        except Exception as exc:
            self._failed("write", exc)
            self.counts["failed"] += 1
            return
        self._recovered()
        self.counts["stored"] += 1

    def _failed(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self._retry_after_s
        if not self._failing:
            self._failing = True
            log.warning(
                "shared verdict cache unavailable (%s: %s: %s); serving from this process "
                "only, retrying every %g s",
                what,
                type(exc).__name__,
                exc,
                self._retry_after_s,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("shared verdict cache reachable again")

    async def aclose(self) -> None:
        """Let pending writes finish (each is capped by the timeout), then disconnect."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()


def shareable(verdict: Verdict) -> bool:
    """Degraded verdicts are never cached; THINK traces may quote the checked text."""
    return not verdict.degraded and verdict.think is None and verdict.mode != "think"


def _encode(verdict: Verdict, *, expires: float) -> bytes:
    return orjson.dumps(
        {
            "v": _FORMAT,
            "exp": expires,
            "stage": verdict.stage,
            "prompt_label": verdict.prompt_label,
            "response_label": verdict.response_label,
            "categories": verdict.categories,
            "score": verdict.score,
            "raw": verdict.raw,
            "latency_ms": verdict.latency_ms,
            "guard": verdict.guard,
            "model": verdict.model,
            "policy": verdict.policy,
            "mode": verdict.mode,
        }
    )


def _decode(raw: bytes, *, now: float) -> tuple[Verdict, float] | None:
    """The stored verdict and its remaining life; None when expired or not ours to read (an
    older layout, or a value written by something else): a miss."""
    try:
        data = orjson.loads(raw)
        if data.get("v") != _FORMAT:
            return None
        left = float(data["exp"]) - now
        if left <= 0:
            return None
        verdict = Verdict(
            stage=data["stage"],
            prompt_label=data["prompt_label"],
            response_label=data["response_label"],
            categories=tuple(data["categories"]),
            score=data["score"],
            think=None,
            raw=data["raw"],
            latency_ms=float(data["latency_ms"]),
            cache_hit=True,
            degraded=False,
            guard=data["guard"],
            model=data["model"],
            policy=data["policy"],
            mode=data["mode"],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return verdict, left
