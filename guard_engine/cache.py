"""The verdict cache: an in-process LRU with a TTL, keyed by everything a verdict depends on.

A key covers the guard, the adapter, the policy's `name@hash` (so a policy edit invalidates
its verdicts), the mode and the checked content: prompt, response, context turns and the
sha256 of every normalized image. Because the input check judges only the last user message
by default (`input.scope: last_user`), earlier turns of a multi-turn chat are never sent to
the guard again; with `scope: conversation` they are context and the key covers them.

An optional shared tier (`SharedVerdicts`, e.g. guard_engine.shared_cache in Redis) sits
behind the LRU: asked only when the LRU misses, fed in the background with every verdict the
LRU stores, so that a verdict computed by one replica is a hit on the others.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import orjson

from guard_engine.types import GuardRequest, Verdict

# Bumped when the key layout changes.
_KEY_VERSION = "guardline-verdict/1"


def cache_key(
    *, guard: str, adapter: str, policy_ref: str, mode: str, request: GuardRequest
) -> str:
    """A sha256 hex digest over what the verdict for `request` depends on.

    The fields are serialized as one JSON array, so no choice of texts can make two different
    requests collide by concatenation (e.g. a prompt ending where a response begins).
    """
    payload = orjson.dumps(
        [
            _KEY_VERSION,
            guard,
            adapter,
            policy_ref,
            mode,
            request.prompt,
            request.response,
            [[turn.role, turn.text] for turn in request.context],
            [image.sha256 for image in request.images],
        ]
    )
    return hashlib.sha256(payload).hexdigest()


class SharedVerdicts(Protocol):
    """A cache tier shared by replicas. Never raises: an unreachable store is a miss."""

    async def get(self, key: str) -> tuple[Verdict, float] | None:
        """(verdict marked `cache_hit`, seconds it still lives) or None."""
        ...

    def put(self, key: str, verdict: Verdict) -> None:
        """Store in the background: returns at once."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    evictions: int
    expirations: int


class VerdictCache:
    """LRU with TTL. `max_entries=0` disables caching (every `get` misses, `put` drops).

    A lock guards the dict because the engine may look up verdicts from worker threads
    (the embedded guard runs off the event loop); uncontended it costs well under a
    microsecond.
    """

    def __init__(
        self,
        max_entries: int = 10000,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedVerdicts | None = None,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self.shared = shared
        self._entries: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0

    def get(self, key: str) -> Verdict | None:
        """The cached verdict, marked `cache_hit=True`, or None (absent or expired).

        The stored verdict keeps its original `latency_ms` (what the guard call cost);
        callers that report lookup time replace it.
        """
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            expires, verdict = entry
            if now >= expires:
                del self._entries[key]
                self._expirations += 1
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
        return verdict

    async def get_shared(self, key: str) -> Verdict | None:
        """After a `get` miss: the shared tier's verdict (kept in the LRU for the rest of its
        life there), or None. One round trip to the shared store."""
        if self.shared is None:
            return None
        found = await self.shared.get(key)
        if found is None:
            return None
        verdict, ttl_left = found
        self._store(key, verdict, min(ttl_left, self.ttl_s))
        return verdict

    def put(self, key: str, verdict: Verdict) -> None:
        """Store a verdict, here and (in the background) in the shared tier. Degraded verdicts
        (a fallback guard's, or none at all) are not stored: once the real guard is back, it
        must decide again."""
        if verdict.degraded:
            return
        self._store(key, verdict, self.ttl_s)
        if self.shared is not None:
            self.shared.put(key, verdict)

    def _store(self, key: str, verdict: Verdict, ttl_s: float) -> None:
        if self.max_entries == 0:
            return
        expires = self._clock() + ttl_s
        # Marked once here rather than on every hit: `replace` costs microseconds.
        stored = verdict if verdict.cache_hit else replace(verdict, cache_hit=True)
        with self._lock:
            self._entries[key] = (expires, stored)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                size=len(self._entries),
                evictions=self._evictions,
                expirations=self._expirations,
            )
