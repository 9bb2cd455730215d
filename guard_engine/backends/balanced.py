"""One guard served by several replicas: each check goes to the least busy live endpoint.

Design: a balancer that owns one complete SGLangBackend per endpoint, rather than a list of
URLs inside SGLangBackend. Each endpoint so keeps everything that is per server for free: its
connection pool, its concurrency slots (`max_concurrency` applies per endpoint), its circuit
breaker and its health probe; the balancer adds only the choice of endpoint and the failover,
and a single-endpoint guard does not change at all.

Choice: the endpoint with the fewest checks outstanding from this process, skipping those
whose breaker is open; ties go round-robin, so that sequential traffic alternates too.
Failover: when an endpoint could not answer (connection refused or lost, circuit open, 5xx,
429: `sglang.server_failed`) the check goes at once to the next endpoint (the endpoints do not
retry on their own server: `retry_here=False`). A check has no side effects, so asking a
second replica is harmless. A refused request (4xx), an unreadable answer or a timeout is the
check's result: another replica would refuse it too, or the deadline is spent. When every
endpoint failed, the round is tried again after a short backoff while the deadline allows (as
a single endpoint retries its own connection).

Health: ready while any endpoint is; the detail lists every endpoint's own health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.backends.sglang import (
    MAX_ATTEMPTS,
    GuardUnreachable,
    SGLangBackend,
    backoff_s,
    server_failed,
)
from guard_engine.errors import GuardError, GuardTimeout
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode


class _Endpoint:
    __slots__ = ("backend", "last_pick", "outstanding")

    def __init__(self, backend: SGLangBackend) -> None:
        self.backend = backend
        self.outstanding = 0
        self.last_pick = 0  # when it was last chosen: ties go to the longest unused

    def callable_now(self) -> bool:
        breaker = self.backend.breaker
        return breaker is None or breaker.state != "open"


class BalancedBackend:
    """Several SGLangBackend replicas of one guard (same model and adapter) as one backend."""

    def __init__(self, endpoints: Sequence[SGLangBackend], *, timeout_ms: int) -> None:
        if len(endpoints) < 2:
            raise ValueError("a balanced guard needs at least two endpoints")
        first = endpoints[0]
        self.name = first.name
        self.model = first.model
        self.timeout_ms = timeout_ms
        self._endpoints = [_Endpoint(backend) for backend in endpoints]
        self._picks = 0

    @property
    def endpoints(self) -> list[SGLangBackend]:
        return [endpoint.backend for endpoint in self._endpoints]

    def outstanding(self) -> dict[str, int]:
        return {e.backend.root_url: e.outstanding for e in self._endpoints}

    def _pick(self, tried: set[int]) -> int | None:
        """The callable endpoint not yet tried with the fewest outstanding checks; among
        equals the one unused longest (so sequential traffic goes round-robin)."""
        candidates = [
            i for i, e in enumerate(self._endpoints) if i not in tried and e.callable_now()
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda i: (self._endpoints[i].outstanding, self._endpoints[i].last_pick),
        )
        self._picks += 1
        self._endpoints[best].last_pick = self._picks
        return best

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        # One deadline for the whole check, handed to each endpoint call rather than imposed
        # from outside: an endpoint that does not answer in time then fails by its own
        # timeout, which its breaker counts (a cancellation from here would not be).
        deadline = asyncio.get_running_loop().time() + self.timeout_ms / 1000
        return await self._rounds(request, policy, mode, headers, deadline)

    async def _rounds(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        mode: Mode,
        headers: dict[str, str] | None,
        deadline: float,
    ) -> BackendResult:
        loop = asyncio.get_running_loop()
        error: GuardError | None = None  # the last endpoint failure
        for round_ in range(1, MAX_ATTEMPTS + 1):
            tried: set[int] = set()
            while (i := self._pick(tried)) is not None:
                if loop.time() >= deadline:
                    raise GuardTimeout(
                        f"no guard answer within {self.timeout_ms} ms", guard=self.name
                    )
                tried.add(i)
                endpoint = self._endpoints[i]
                endpoint.outstanding += 1
                try:
                    return await endpoint.backend.check(
                        request, policy, mode=mode, headers=headers, deadline=deadline
                    )
                except GuardError as exc:
                    if not server_failed(exc):
                        raise
                    error = exc  # this server could not answer: the next one may
                finally:
                    endpoint.outstanding -= 1
            if not tried:  # every breaker is open: nothing to wait for here
                if error is not None:
                    raise error  # opened by this check's own failures: say what they were
                raise GuardUnreachable(
                    "circuit open on every endpoint: "
                    + "; ".join(e.backend.root_url for e in self._endpoints),
                    guard=self.name,
                )
            assert error is not None  # every endpoint tried failed
            delay = backoff_s(round_)
            if round_ == MAX_ATTEMPTS or loop.time() + delay >= deadline:
                raise error
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def health(self) -> BackendHealth:
        healths = await asyncio.gather(*(e.backend.health() for e in self._endpoints))
        urls = [e.backend.root_url for e in self._endpoints]
        up = sum(h.ok for h in healths)
        return BackendHealth(
            ok=up > 0,
            detail=f"{up}/{len(healths)} endpoints healthy",
            endpoints=tuple(zip(urls, healths, strict=True)),
        )

    async def aclose(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.backend.aclose()
