"""The guard engine, counting the guard calls each request makes (for `limits`' per-tenant
`guard_checks_per_minute`). Installed only when some tenant has that budget."""

from __future__ import annotations

from guard_engine.engine import GuardEngine
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, Verdict
from proxy.limits.checks import count_check


class CountedEngine(GuardEngine):
    """The same backends and verdict cache as `engine`; every check that reached a guard (not
    a cache hit) is counted for the request it was made for."""

    def __init__(self, engine: GuardEngine) -> None:
        super().__init__(engine.guards, default_guard=engine.default_guard, cache=engine.cache)

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode | None = None,
        guard: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Verdict:
        verdict = await super().check(request, policy, mode=mode, guard=guard, headers=headers)
        if not verdict.cache_hit:
            count_check()
        return verdict
