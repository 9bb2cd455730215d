"""A backend owns transport: it gets one verdict for one request, or raises a GuardError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, ParsedVerdict


@dataclass(frozen=True, slots=True)
class BackendResult:
    verdict: ParsedVerdict
    raw: str  # the guard's answer as text (for audit); the embedded guard writes its score
    # Set by a backend that delegates (the cascade guard): who inside it answered, e.g.
    # "local" or a model guard's name. The engine stamps the verdict's guard as
    # "<backend>/<answered_by>" and its model as `model` (when set).
    answered_by: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class BackendHealth:
    ok: bool
    detail: str  # e.g. "closed", "open (3 failures, retry in 4.2 s)", "model loaded"
    # A guard served by several replicas: (endpoint URL, its own health) for each.
    endpoints: tuple[tuple[str, BackendHealth], ...] = ()


class Backend(Protocol):
    """A backend may also have `cache_variant: str` (read with getattr by the engine): part of
    the verdict cache key, for a backend whose answers change without a policy edit (the
    cascade guard's head file and whether it still answers locally)."""

    name: str  # the guard's name in config.yaml
    model: str  # the guard model's id, for spans and audit

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        """One verdict. `headers` carries trace propagation (traceparent) to HTTP guards."""
        ...

    async def health(self) -> BackendHealth: ...

    async def aclose(self) -> None: ...
