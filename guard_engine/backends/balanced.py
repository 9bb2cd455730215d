"""One guard served by several replicas: each check goes to the least busy live endpoint.

Design: a balancer that owns one complete SGLangBackend per endpoint, rather than a list of
URLs inside SGLangBackend. Each endpoint so keeps everything that is per server for free: its
connection pool, its concurrency slots (`max_concurrency` applies per endpoint), its circuit
breaker and its health probe; the balancer adds only the choice of endpoint and the failover,
and a single-endpoint guard does not change at all.

Choice: the endpoint with the fewest checks outstanding from this process, skipping those
whose breaker is open; ties go round-robin, so that sequential traffic alternates too.
Failover: a check that never reached its endpoint (connection failed, or the breaker refused
it: `GuardUnreachable`) is sent to the next endpoint. It cannot be judged twice, so nothing is
lost by retrying it. Any other failure (a timeout, a 5xx after the endpoint's own retries, an
unreadable answer) is the check's result: the guard may have seen it, and the deadline is
spent. When every endpoint refused the connection, the whole round is tried again after a
short backoff while the deadline allows (as a single endpoint retries its connection).

Health: ready while any endpoint is; the detail lists every endpoint's own health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.backends.sglang import MAX_ATTEMPTS, GuardUnreachable, SGLangBackend, backoff_s
from guard_engine.errors import GuardTimeout
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode


class _Endpoint:
    __slots__ = ("backend", "outstanding")

    def __init__(self, backend: SGLangBackend) -> None:
        self.backend = backend
        self.outstanding = 0

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
        self._next = 0  # where the round-robin tie-break starts next time

    @property
    def endpoints(self) -> list[SGLangBackend]:
        return [endpoint.backend for endpoint in self._endpoints]

    def outstanding(self) -> dict[str, int]:
        return {e.backend.root_url: e.outstanding for e in self._endpoints}

    def _pick(self, tried: set[int]) -> int | None:
        n = len(self._endpoints)
        start = self._next
        self._next = (start + 1) % n
        best: int | None = None
        for offset in range(n):
            i = (start + offset) % n
            endpoint = self._endpoints[i]
            if i in tried or not endpoint.callable_now():
                continue
            if best is None or endpoint.outstanding < self._endpoints[best].outstanding:
                best = i
        return best

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_ms / 1000
        try:
            async with asyncio.timeout_at(deadline):
                return await self._rounds(request, policy, mode, headers, deadline)
        except TimeoutError:
            raise GuardTimeout(
                f"no guard answer within {self.timeout_ms} ms", guard=self.name
            ) from None

    async def _rounds(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        mode: Mode,
        headers: dict[str, str] | None,
        deadline: float,
    ) -> BackendResult:
        loop = asyncio.get_running_loop()
        for round_ in range(1, MAX_ATTEMPTS + 1):
            tried: set[int] = set()
            error: GuardUnreachable | None = None
            while (i := self._pick(tried)) is not None:
                tried.add(i)
                endpoint = self._endpoints[i]
                endpoint.outstanding += 1
                try:
                    return await endpoint.backend.check(
                        request, policy, mode=mode, headers=headers
                    )
                except GuardUnreachable as exc:
                    error = exc  # never reached it: the next endpoint may
                finally:
                    endpoint.outstanding -= 1
            if error is None:  # every breaker is open: nothing to wait for here
                raise GuardUnreachable(
                    "circuit open on every endpoint: "
                    + "; ".join(e.backend.root_url for e in self._endpoints),
                    guard=self.name,
                )
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
