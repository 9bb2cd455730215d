"""A streamed answer's output decision, read from the stream's outcome after it ended."""

from __future__ import annotations

from dataclasses import replace

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import Verdict
from proxy.moderation.decide import StageResult, skipped
from proxy.streaming.outcome import StreamOutcome


def unchecked_verdict(policy: CompiledPolicy, result: StageResult) -> Verdict:
    """What a fail-open stream check returns: explicitly degraded, never a guard's word."""
    return Verdict(
        stage="output",
        prompt_label="safe",
        response_label="safe",
        categories=(),
        score=None,
        think=None,
        raw=f"unchecked: guard failed ({result.degraded_reason}); on_guard_error: open",
        latency_ms=result.guard_ms,
        cache_hit=False,
        degraded=True,
        guard="none",
        model="none",
        policy=policy.ref,
        mode=policy.mode,
    )


def stream_result(outcome: StreamOutcome, checks: list[StageResult]) -> StageResult:
    """The stream's decision (first flagged check, else the last), with the request it judged."""
    return _with_request(_result(outcome), checks)


def _result(outcome: StreamOutcome) -> StageResult:
    last = outcome.verdicts[-1] if outcome.verdicts else None
    flagged = next((v for v in outcome.verdicts if v.flagged), None)
    if flagged is not None:
        return StageResult(
            stage="output", status="unsafe", verdict=flagged, guard_ms=outcome.guard_ms
        )
    if outcome.uncheckable:
        # An event nobody could parse: refused (the stream was ended) or released unchecked.
        # Either way no guard saw all of the output, so it is never reported as safe.
        reason = "uncheckable_refused" if outcome.refused_uncheckable else "uncheckable_flagged"
        return StageResult(
            stage="output",
            status="degraded",
            verdict=last,
            degraded_reason=reason,
            guard_ms=outcome.guard_ms,
        )
    if outcome.error is not None:
        return StageResult(stage="output", status="degraded", degraded_reason=outcome.error.reason)
    if last is None:
        return skipped("output")
    degraded = any(v.degraded for v in outcome.verdicts)
    return StageResult(
        stage="output",
        status="degraded" if degraded else "safe",
        verdict=last,
        guard_ms=outcome.guard_ms,
    )


def _with_request(result: StageResult, checks: list[StageResult]) -> StageResult:
    for check in reversed(checks):
        if result.verdict is None or check.verdict is result.verdict:
            return replace(result, request=check.request)
    return result
