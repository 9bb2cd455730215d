"""What a finished moderation reports: metrics, audit records (and THINK re-checks), and the
summary that the request log line and the SERVER span carry.

`ModerationReport.finished` is the pipeline's `on_finished` hook, called once per request when
its moderation is complete (for a stream: when it ended), which for a complete body is before
the response is sent. So it only leaves the request's summary in the scope state and defers
the rest (metrics, audit records, THINK re-checks) until the response has gone out
(`RequestContext.after_response`). None of it blocks: metrics are counter
adds, audit records go to the writer's queue, THINK re-checks are background tasks. `shadow`
is the `on_shadow` hook, `reloaded` the policy store's `on_reload`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import Verdict
from proxy.audit.record import AuditRecord, content_hash, current_trace_id, new_record_id
from proxy.chat_call import ChatCall
from proxy.context import ModerationSummary
from proxy.moderation.decide import StageResult
from proxy.moderation.headers import Decisions
from proxy.streaming.outcome import StreamOutcome
from proxy.timing import RequestTiming

if TYPE_CHECKING:
    from guard_engine.engine import GuardEngine
    from proxy.audit.think import ThinkScheduler
    from proxy.audit.writer import AuditWriter
    from proxy.observability.metrics import BreakerState, GatewayMetrics

UNCHECKED_GUARD: Final = "none"  # the guard name of a fail-open stream window's stand-in verdict


# guard_engine's breaker states -> the gauge's labels.
_BREAKER_STATES: Final[dict[str, BreakerState]] = {
    "closed": "closed",
    "half_open": "half-open",
    "open": "open",
}


class ModerationReport:
    """The pipeline's observers. Any of metrics/writer/think may be None (switched off)."""

    def __init__(
        self,
        *,
        engine: GuardEngine,
        metrics: GatewayMetrics | None = None,
        writer: AuditWriter | None = None,
        think: ThinkScheduler | None = None,
        log_content: bool = False,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.writer = writer
        self.think = think
        self.log_content = log_content

    # --- on_finished --------------------------------------------------------------------------

    def finished(
        self,
        call: ChatCall,
        decisions: Decisions,
        timing: RequestTiming,
        outcome: StreamOutcome | None,
    ) -> None:
        trace_id = current_trace_id() if self.writer is not None else None

        def report() -> None:
            self._report(call, decisions, timing, outcome, trace_id)

        context = call.context
        if context is None:  # not served over HTTP: nothing to wait for
            report()
            return
        context.moderation = self._summary(call, decisions, timing, outcome)
        context.after_response(report)

    def _report(
        self,
        call: ChatCall,
        decisions: Decisions,
        timing: RequestTiming,
        outcome: StreamOutcome | None,
        trace_id: str | None,
    ) -> None:
        stages = [s for s in (decisions.input, decisions.output) if s is not None]
        if self.metrics is not None:
            self._observe(decisions.policy, stages, timing, outcome)
        if self.writer is not None:
            for result in stages:
                self._audit(call, decisions.policy, result, trace_id)

    def _observe(
        self,
        policy: CompiledPolicy,
        stages: list[StageResult],
        timing: RequestTiming,
        outcome: StreamOutcome | None,
    ) -> None:
        metrics = self.metrics
        assert metrics is not None
        metrics.observe_overhead(timing.overhead_seconds())
        for result in stages:
            metrics.observe_verdict(policy.name, result.stage, result.status, result.categories)
            if result.degraded_reason:
                metrics.observe_degraded(policy.name, result.stage, result.degraded_reason)
        # Every guard call made: the input's, then the output's (a stream: each window's).
        calls: list[Verdict | None] = [s.verdict for s in stages if s.stage == "input"]
        if outcome is not None:
            calls.extend(outcome.verdicts)
            metrics.observe_holdback_checks(outcome.checks)
        else:
            calls.extend(s.verdict for s in stages if s.stage == "output")
        for verdict in calls:
            if verdict is None or verdict.guard == UNCHECKED_GUARD:
                continue
            metrics.observe_cache(verdict.guard, verdict.cache_hit)
            if not verdict.cache_hit:  # a cache hit did not call the guard
                metrics.observe_guard(verdict.guard, verdict.stage, verdict.latency_ms / 1000.0)

    def _audit(
        self, call: ChatCall, policy: CompiledPolicy, result: StageResult, trace_id: str | None
    ) -> None:
        writer = self.writer
        assert writer is not None
        verdict, request = result.verdict, result.request
        if request is None:
            return  # not checked because nothing asked for it (stage off, no text)
        if verdict is not None and verdict.guard != UNCHECKED_GUARD:
            record = AuditRecord.from_verdict(
                verdict,
                request,
                request_id=call.request_id,
                route=call.route.name,
                tenant=call.tenant,
                trace_id=trace_id,
                store_content=policy.audit.content,
            )
            writer.submit(record)
            if self.think is not None:
                self.think.maybe_schedule(record.id, request, policy, verdict)
            return
        # The guard failed and on_guard_error: open let the request through unchecked.
        content = None
        if policy.audit.content:
            content = request.prompt if request.response is None else request.response
        writer.submit(
            AuditRecord(
                time=time.time(),
                request_id=call.request_id,
                trace_id=trace_id,
                tenant=call.tenant,
                route=call.route.name,
                policy=policy.ref,
                stage=result.stage,
                verdict="skipped",
                categories=(),
                score=None,
                guard=policy.guard or self.engine.default_guard,
                guard_latency_ms=result.guard_ms,
                degraded=True,
                content_hash=content_hash(request),
                content=content,
                id=new_record_id(),
            )
        )

    def _summary(
        self,
        call: ChatCall,
        decisions: Decisions,
        timing: RequestTiming,
        outcome: StreamOutcome | None,
    ) -> ModerationSummary:
        stages = (decisions.input, decisions.output)
        categories = tuple(dict.fromkeys(c for s in stages if s is not None for c in s.categories))
        summary = ModerationSummary(
            policy=decisions.policy.ref,
            input=decisions.input.status if decisions.input else "skipped",
            output=decisions.output.status if decisions.output else "skipped",
            categories=categories,
            degraded=tuple(
                f"{s.stage}:{s.degraded_reason}"
                for s in stages
                if s is not None and s.degraded_reason
            ),
            stream=call.body.stream,
            model=call.body.model,
            timing=timing,
            holdback_checks=outcome.checks if outcome is not None else None,
        )
        if self.log_content:
            for stage in stages:
                if stage is not None and stage.request is not None:
                    summary.prompt = stage.request.prompt
                    if stage.request.response is not None:
                        summary.response = stage.request.response
        return summary

    # --- on_shadow, on_reload, scrape ---------------------------------------------------------

    def shadow(
        self,
        call: ChatCall,
        policy: CompiledPolicy,
        shadow: CompiledPolicy,
        enforced: StageResult,
        result: StageResult,
    ) -> None:
        """A shadow policy judged the same content: count agreement (the pipeline's hook)."""
        if self.metrics is None:
            return
        if result.verdict is None:
            outcome = "error"
        elif result.flagged != enforced.flagged:
            outcome = "disagree"
        else:
            outcome = "agree"
        self.metrics.observe_shadow(policy.name, shadow.name, enforced.stage, outcome)

    def reloaded(self, path: str, policy: CompiledPolicy | None, error: str | None) -> None:
        """A policy file changed: counted by result (the store's on_reload, beside the log)."""
        if self.metrics is not None:
            self.metrics.observe_policy_reload("ok" if policy is not None else "error")

    def sample_breakers(self) -> None:
        """Copy each guard's circuit breaker state into the gauge (called at scrape time)."""
        if self.metrics is None:
            return
        for name, backend in self.engine.guards.items():
            breakers = [(name, getattr(backend, "breaker", None))]
            # A guard with replicas (base_urls): one breaker per endpoint, as `name@url`.
            replicas = getattr(getattr(backend, "inner", backend), "endpoints", None)
            if isinstance(replicas, list):
                breakers = [(f"{name}@{r.root_url}", r.breaker) for r in replicas]
            for label, breaker in breakers:
                state = getattr(breaker, "state", None)
                if isinstance(state, str) and state in _BREAKER_STATES:
                    self.metrics.set_breaker_state(label, _BREAKER_STATES[state])
