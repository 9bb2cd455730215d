"""One guard decision under the policy's `on_guard_error`.

    closed    the guard's failure is a 503 guard_unavailable (the only moderation 5xx)
    open      the request goes on unchecked; the stage is marked `degraded`
    fallback  the embedded guard decides; the verdict is marked degraded

A flagged verdict is a policy decision, never an error: callers turn it into a block.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from guard_engine.engine import GuardEngine
from guard_engine.errors import GuardError
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, Stage, Verdict
from proxy.errors import GuardUnavailableError
from proxy.guards import FALLBACK_GUARD

StageStatus = Literal["safe", "unsafe", "skipped", "degraded"]


@dataclass(frozen=True, slots=True)
class StageResult:
    stage: Stage
    status: StageStatus
    verdict: Verdict | None = None
    degraded_reason: str | None = None  # timeout | unavailable | unparseable (+ "fallback")
    guard_ms: float = 0.0
    # What was checked (the audit record's content hash and THINK re-check need it).
    request: GuardRequest | None = None

    @property
    def flagged(self) -> bool:
        return self.verdict is not None and self.verdict.flagged

    @property
    def categories(self) -> tuple[str, ...]:
        return self.verdict.categories if self.verdict is not None and self.flagged else ()


def skipped(stage: Stage) -> StageResult:
    return StageResult(stage=stage, status="skipped")


def _result(
    verdict: Verdict, *, reason: str | None = None, request: GuardRequest | None = None
) -> StageResult:
    if verdict.flagged:
        status: StageStatus = "unsafe"
    else:
        status = "degraded" if verdict.degraded else "safe"
    return StageResult(
        stage=verdict.stage,
        status=status,
        verdict=verdict,
        degraded_reason=reason,
        guard_ms=verdict.latency_ms,
        request=request,
    )


async def judge(
    engine: GuardEngine,
    request: GuardRequest,
    policy: CompiledPolicy,
    *,
    headers: dict[str, str] | None = None,
    mode: Mode | None = None,
    upstream_started: bool = False,
) -> StageResult:
    """Check `request` and apply `on_guard_error`; raises GuardUnavailableError when closed.

    `upstream_started`: the upstream call runs beside this input check (`input.parallel`), so
    a failure message must not claim the request was never forwarded."""
    try:
        verdict = await engine.check(request, policy, headers=headers, mode=mode)
        return _result(verdict, request=request)
    except GuardError as exc:
        failure = exc
    if policy.on_guard_error == "open":
        return StageResult(
            stage=request.stage,
            status="degraded",
            degraded_reason=failure.reason,
            request=request,
        )
    if policy.on_guard_error == "fallback":
        try:
            verdict = await engine.check(
                request, policy, guard=FALLBACK_GUARD, mode="binary", headers=headers
            )
        except GuardError as fallback_failure:
            raise _unavailable(
                request.stage, failure, fallback=fallback_failure, parallel=upstream_started
            ) from None
        return _result(
            replace(verdict, degraded=True), reason=f"fallback:{failure.reason}", request=request
        )
    raise _unavailable(request.stage, failure, parallel=upstream_started) from None


# What happened to the request when its check failed, said plainly: an output check runs
# after the upstream answered (the call was made, and billed), only its answer is withheld.
_OUTCOME: dict[Stage, tuple[str, str]] = {
    "input": ("this request", "It was not forwarded to the model."),
    "output": (
        "the model's response",
        "The upstream model was called and answered; its response was withheld.",
    ),
}
# input.parallel: the upstream call started beside the check. It is cancelled when the check
# fails, but it may already have reached the model (which may bill the prompt): say so.
_PARALLEL_INPUT_OUTCOME = (
    "The call to the model, started at the same time (input.parallel), was cancelled; "
    "no part of its answer was returned."
)


def _unavailable(
    stage: Stage,
    failure: GuardError,
    *,
    fallback: GuardError | None = None,
    parallel: bool = False,
) -> GuardUnavailableError:
    checked, outcome = _OUTCOME[stage]
    if parallel and stage == "input":
        outcome = _PARALLEL_INPUT_OUTCOME
    message = f"The content guard could not check {checked} ({failure.reason})"
    if fallback is not None:
        message += f", and the fallback guard failed too ({fallback.reason}: {fallback})"
    return GuardUnavailableError(
        f"{message}. {outcome}",
        headers={"retry-after": "1", "x-guardline-degraded": failure.reason},
    )
