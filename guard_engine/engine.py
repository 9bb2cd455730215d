"""The one interface the proxy talks to: `await engine.check(request, policy) -> Verdict`.

The engine picks the guard (the policy's, else the default), consults the verdict cache, calls
the backend and turns its result into a Verdict stamped with guard, model, `policy@hash`,
latency and cache state. Guard failures propagate as GuardError: what they mean (closed, open,
fallback) is the caller's policy decision, not the engine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from guard_engine.backends.base import Backend, BackendHealth
from guard_engine.cache import VerdictCache, cache_key
from guard_engine.errors import GuardUnavailable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, Verdict


class GuardEngine:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        default_guard: str,
        cache: VerdictCache | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if default_guard not in backends:
            raise ValueError(f"default guard {default_guard!r} is not among {sorted(backends)}")
        self._backends = dict(backends)
        self.default_guard = default_guard
        self._cache = cache
        self._clock = clock

    @property
    def guards(self) -> Mapping[str, Backend]:
        return self._backends

    @property
    def cache(self) -> VerdictCache | None:
        return self._cache

    def guard_for(self, policy: CompiledPolicy, guard: str | None = None) -> Backend:
        name = guard or policy.guard or self.default_guard
        backend = self._backends.get(name)
        if backend is None:
            raise GuardUnavailable(f"guard {name!r} is not configured", guard=name)
        return backend

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode | None = None,
        guard: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Verdict:
        """One verdict. `guard` overrides the policy's guard (used for the embedded fallback)."""
        backend = self.guard_for(policy, guard)
        mode = mode or policy.mode
        started = self._clock()
        key = None
        if self._cache is not None:
            variant = getattr(backend, "cache_variant", None)
            key = cache_key(
                guard=backend.name,
                adapter=backend.model if variant is None else f"{backend.model}#{variant}",
                policy_ref=policy.ref,
                mode=mode,
                request=request,
            )
            # The shared tier (one round trip) only when this process has no verdict.
            cached = self._cache.get(key) or await self._cache.get_shared(key)
            if cached is not None:
                return _stamp(cached, latency_ms=(self._clock() - started) * 1000, cache_hit=True)
        result = await backend.check(request, policy, mode=mode, headers=headers)
        parsed = result.verdict
        verdict = Verdict(
            stage=request.stage,
            prompt_label=parsed.prompt_label,
            response_label=parsed.response_label,
            categories=parsed.categories,
            score=parsed.score,
            think=parsed.think,
            raw=result.raw,
            latency_ms=(self._clock() - started) * 1000,
            cache_hit=False,
            degraded=False,
            guard=_answered_by(backend.name, result.answered_by),
            model=result.model or backend.model,
            policy=policy.ref,
            mode=mode,
        )
        if self._cache is not None and key is not None:
            self._cache.put(key, verdict)
        return verdict

    async def health(self) -> dict[str, BackendHealth]:
        return {name: await backend.health() for name, backend in self._backends.items()}

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()
        if self._cache is not None and self._cache.shared is not None:
            await self._cache.shared.aclose()


def _answered_by(guard: str, inside: str | None) -> str:
    """A cascade's verdict names who inside it answered ("cascade/local"); a cached verdict
    keeps that name, so the cache never hides who decided."""
    return guard if inside is None else f"{guard}/{inside}"


def _stamp(verdict: Verdict, *, latency_ms: float, cache_hit: bool) -> Verdict:
    return replace(verdict, latency_ms=latency_ms, cache_hit=cache_hit)
