"""Asynchronous THINK re-checks: for the decisions a policy selects (`audit.think`), ask the guard
again in THINK mode in the background and attach its reasoning to the audit record.

The request never waits: `maybe_schedule` only starts a task. At most `max_concurrency` re-checks
run at once (they compete with live traffic for the guard) and at most `max_pending` wait; beyond
that a re-check is dropped and counted. A THINK verdict that differs from the fast one is stored
as a disagreement and counted: it is the signal to review a policy.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Verdict

if TYPE_CHECKING:
    from proxy.audit.writer import AuditWriter
    from proxy.background import BackgroundTasks
    from proxy.observability.metrics import GatewayMetrics

_log = logging.getLogger("guardline.audit.think")

ThinkCheck = Callable[[GuardRequest, CompiledPolicy], Awaitable[Verdict]]

DEFAULT_MAX_PENDING: Final = 1000


class ThinkScheduler:
    """Runs THINK re-checks in the background of the running event loop."""

    def __init__(
        self,
        check: ThinkCheck,
        writer: AuditWriter,
        metrics: GatewayMetrics | None = None,
        max_concurrency: int = 2,
        rng: random.Random | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        background: BackgroundTasks | None = None,
    ) -> None:
        self._check = check
        self._writer = writer
        self._metrics = metrics
        self._rng = rng if rng is not None else random.Random()
        self._max_pending = max_pending
        self._max_concurrency = max_concurrency
        # Created lazily: the scheduler may be built outside the loop that runs it.
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The gateway's registry: shutdown drains the re-checks before the engine and the
        # audit writer close (and refuses new ones after that).
        self._background = background
        self._closed = False

    def wanted(self, policy: CompiledPolicy, fast_verdict: Verdict) -> bool:
        """Does the policy select this decision for a THINK re-check?"""
        setting = policy.audit.think
        if setting == "off":
            return False
        # A THINK-mode decision already has its reasoning; a degraded one was not made by the
        # configured guard, which is what a re-check would need.
        if fast_verdict.think is not None or fast_verdict.degraded:
            return False
        if setting == "all":
            return True
        if setting == "flagged":
            return fast_verdict.flagged
        return self._rng.random() < policy.audit.think_rate  # sampled

    def maybe_schedule(
        self, record_id: str, request: GuardRequest, policy: CompiledPolicy, fast_verdict: Verdict
    ) -> bool:
        """Start a re-check if the policy selects this decision. Never blocks; call from the
        event loop. True when a re-check was started."""
        if self._closed or not self.wanted(policy, fast_verdict):
            return False
        if self._background is not None and self._background.closing:
            self._count(policy.name, "cancelled")  # nothing is left open for it to use
            return False
        if len(self._tasks) >= self._max_pending:
            self._count(policy.name, "dropped")
            return False
        task = asyncio.get_running_loop().create_task(
            self._recheck(record_id, request, policy, fast_verdict),
            name=f"guardline-think-{record_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._background is not None:
            self._background.track(task)
        return True

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _recheck(
        self, record_id: str, request: GuardRequest, policy: CompiledPolicy, fast: Verdict
    ) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._max_concurrency)
        async with self._semaphore:
            try:
                verdict = await self._check(request, policy)
            except asyncio.CancelledError:
                # Shutdown: the record keeps its fast verdict, without a THINK trace.
                _log.warning("THINK re-check cancelled for audit record %s", record_id)
                self._count(policy.name, "cancelled")
                raise
            except Exception as exc:
                _log.warning(
                    "THINK re-check failed for audit record %s: %s", record_id, type(exc).__name__
                )
                self._count(policy.name, "error")
                return
        disagreement = verdict.flagged != fast.flagged
        self._writer.attach_think(record_id, verdict.think, verdict.label, disagreement)
        if self._metrics is not None:
            self._metrics.observe_guard(verdict.guard, "think", verdict.latency_ms / 1000.0)
        self._count(policy.name, "disagree" if disagreement else "agree")

    def _count(self, policy: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_think(policy, result)

    async def aclose(self, grace_s: float | None = 30.0) -> None:
        """Stop scheduling; wait up to `grace_s` for running re-checks, then cancel the rest."""
        self._closed = True
        if not self._tasks:
            return
        tasks = set(self._tasks)
        _done, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
