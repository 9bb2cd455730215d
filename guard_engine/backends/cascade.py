"""The cascade guard: a distilled head answers the checks it is confident about, a model guard
answers the rest.

The head file (`distilled_head.py`, written by `guardline distill`) holds embedded-guard heads
trained on one policy's model-guard verdicts and two thresholds per stage. The local scorer is
an `EmbeddedBackend` reading that file's weights; the score it computes for the stage judged
(the prompt's for input checks, the answer's for output checks: whole answers and stream
hold-back windows alike) is compared with the stage's thresholds:

    score <= low   ->  safe, answered locally
    score >= high  ->  unsafe, answered locally
    otherwise      ->  the model guard answers

The model guard also answers what the head cannot judge: images, THINK mode (the head has no
reasoning to give), an unsafe local answer when categories are asked for and the head has no
category head, and every check while the local scorer is overloaded or cannot load (a
cascade degrades to its model guard, never to an error). Once drift monitoring
(`cascade_drift.py`) suspends local answers, the model guard answers everything.

Every result says who answered (`BackendResult.answered_by`: "local" or the model guard's
name); the engine stamps the verdict's guard "<cascade>/local" or "<cascade>/<model guard>".
`guardline distill` relies on the "/local" suffix to never train on local answers.

The model guard is shared with the engine (it is also a guard of its own, with its breaker and
connections), so the cascade never closes it; it owns its local scorer and its re-check tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from guard_engine.backends.base import Backend, BackendHealth, BackendResult
from guard_engine.backends.cascade_drift import DriftMonitor, DriftSettings, DriftStats
from guard_engine.backends.distilled_head import DistilledHead, Thresholds
from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.errors import GuardError
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, ParsedVerdict, Stage

log = logging.getLogger("guardline.cascade")

LOCAL: Final = "local"  # answered_by of a local answer; `guardline distill` skips "<name>/local"
# Re-checks running at once; beyond it a sampled re-check is dropped (and counted), so a burst
# of traffic can never queue re-checks without limit in front of the model guard.
MAX_RECHECKS_IN_FLIGHT: Final = 32


@dataclass(frozen=True, slots=True)
class CascadeStats:
    """What the proxy's metrics read at scrape time (guard_engine never imports proxy)."""

    # (policy name, answered_by, stage) -> checks answered; the name without its hash, so a
    # policy edit does not start new series
    answers: dict[tuple[str, str, Stage], int]
    local_unavailable: int  # checks the local scorer could not take (sent to the model guard)
    drift: DriftStats


class CascadeBackend:
    """`Backend` of `type: cascade`."""

    def __init__(
        self,
        *,
        name: str,
        head: DistilledHead,
        head_path: Path,
        model_guard: Backend,
        drift: DriftSettings,
        scorer: EmbeddedBackend | None = None,
        monitor: DriftMonitor | None = None,
    ) -> None:
        self.name = name
        self.model = f"cascade({head.fingerprint}|{model_guard.model})"
        self.head = head
        self.head_path = head_path
        self.model_guard = model_guard
        self.local_model = f"guardline-distilled-head@{head.fingerprint}"
        self._scorer = scorer or EmbeddedBackend(name=f"{name}/{LOCAL}", weights_path=head_path)
        self._drift = monitor or DriftMonitor(drift)
        self._answers: Counter[tuple[str, str, Stage]] = Counter()
        self._local_unavailable = 0
        self._rechecks: set[asyncio.Task[None]] = set()

    @property
    def cache_variant(self) -> str:
        # Part of the verdict cache key: once local answers are suspended, verdicts cached
        # from the head must not keep answering.
        state = LOCAL if self._drift.suspended is None else "suspended"
        return f"{self.head.fingerprint}:{state}"

    @property
    def local_suspended(self) -> str | None:
        return self._drift.suspended

    async def warm(self) -> None:
        """Load the local scorer now instead of on the first check."""
        await self._scorer.warm()

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        if self._drift.suspended is None and not request.images and mode != "think":
            local = await self._local_answer(request, policy, mode)
            if local is not None:
                self._answers[(policy.name, LOCAL, request.stage)] += 1
                if self._drift.wants_recheck():
                    self._schedule_recheck(request, policy, mode, local)
                return local
        result = await self.model_guard.check(request, policy, mode=mode, headers=headers)
        self._answers[(policy.name, self.model_guard.name, request.stage)] += 1
        return BackendResult(
            verdict=result.verdict,
            raw=result.raw,
            answered_by=self.model_guard.name,
            model=result.model or self.model_guard.model,
        )

    def thresholds(self, stage: Stage) -> Thresholds:
        meta = self.head.meta
        return meta.prompt_thresholds if stage == "input" else meta.response_thresholds

    async def _local_answer(
        self, request: GuardRequest, policy: CompiledPolicy, mode: Mode
    ) -> BackendResult | None:
        """The head's answer when it is confident and complete enough, else None."""
        thresholds = self.thresholds(request.stage)
        try:
            # The head's `high` threshold as the embedded guard's: its unsafe verdict then
            # names categories and applies the policy's suppressed ones exactly as for a
            # local embedded guard.
            scored = await self._scorer.check(
                request, replace(policy, threshold=thresholds.high), mode=mode
            )
        except GuardError as exc:
            self._local_unavailable += 1
            log.debug(
                "cascade %s: local scorer unavailable, asking the model guard: %s", self.name, exc
            )
            return None
        score = scored.verdict.score
        label = None if score is None else thresholds.local_label(score)
        if label is None:
            return None
        verdict = scored.verdict
        if label == "unsafe" and mode != "binary" and self.head.heads.categories is None:
            return None  # categories were asked for and only the model guard can name them
        if label == "safe":
            verdict = _safe(verdict, request.stage)
        raw = (
            f"[cascade {self.name}: local head {self.head.fingerprint}, "
            f"low={thresholds.low:g} high={thresholds.high:g}] {scored.raw}"
        )
        return BackendResult(verdict=verdict, raw=raw, answered_by=LOCAL, model=self.local_model)

    # --- drift ----------------------------------------------------------------------------------

    def _schedule_recheck(
        self, request: GuardRequest, policy: CompiledPolicy, mode: Mode, local: BackendResult
    ) -> None:
        if len(self._rechecks) >= MAX_RECHECKS_IN_FLIGHT:
            self._drift.dropped()
            return
        task = asyncio.ensure_future(self._recheck(request, policy, mode, local))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _recheck(
        self, request: GuardRequest, policy: CompiledPolicy, mode: Mode, local: BackendResult
    ) -> None:
        try:
            result = await self.model_guard.check(request, policy, mode=mode)
        except GuardError as exc:
            self._drift.failed()
            log.debug("cascade %s: re-check failed: %s", self.name, exc)
            return
        was_suspended = self._drift.suspended
        self._drift.record(
            agree=_flagged(result.verdict, request.stage) == _flagged(local.verdict, request.stage)
        )
        if was_suspended is None and self._drift.suspended is not None:
            log.warning(
                "cascade %s: local answers suspended (%s); the model guard %s answers every "
                "check until the config is reloaded or the gateway restarts",
                self.name,
                self._drift.suspended,
                self.model_guard.name,
            )

    # --- reporting ------------------------------------------------------------------------------

    def stats(self) -> CascadeStats:
        return CascadeStats(
            answers=dict(self._answers),
            local_unavailable=self._local_unavailable,
            drift=self._drift.stats(),
        )

    def describe(self) -> dict[str, Any]:
        """The head and the state of local answers, for /readyz."""
        drift = self._drift.stats()
        return {
            **describe_head(self.head_path, self.head),
            "model_guard": self.model_guard.name,
            "local_answers": "active" if drift.suspended is None else "suspended",
            "suspended_because": drift.suspended,
            "rechecks": drift.agreed + drift.disagreed,
            "disagreement": drift.disagreement,
        }

    async def health(self) -> BackendHealth:
        # Ready when the model guard is: it can answer every check alone.
        model = await self.model_guard.health()
        local = await self._scorer.health()
        if self._drift.suspended is not None:
            state = f"local answers suspended: {self._drift.suspended}"
        elif not local.ok:
            state = f"local head unavailable ({local.detail}), the model guard answers"
        else:
            state = "local answers active"
        detail = (
            f"head {self.head_path.name} ({self.head.fingerprint}); {state}; "
            f"model guard {self.model_guard.name}: {model.detail}"
        )
        return BackendHealth(ok=model.ok, detail=detail)

    async def aclose(self) -> None:
        for task in list(self._rechecks):
            task.cancel()
        await asyncio.gather(*self._rechecks, return_exceptions=True)
        await self._scorer.aclose()


def describe_head(path: Path, head: DistilledHead) -> dict[str, Any]:
    """Which head a cascade uses: file, fingerprint, the policy it was distilled from, when,
    and the thresholds (for /readyz and `guardline policy show`)."""
    meta = head.meta
    return {
        "head": str(path),
        "fingerprint": head.fingerprint,
        "distilled_from": meta.policy,
        "created": meta.created,
        "thresholds": {
            "input": {"low": meta.prompt_thresholds.low, "high": meta.prompt_thresholds.high},
            "output": {
                "low": meta.response_thresholds.low,
                "high": meta.response_thresholds.high,
            },
        },
        "categories": head.heads.categories is not None,
    }


def _flagged(verdict: ParsedVerdict, stage: Stage) -> bool:
    label = verdict.prompt_label if stage == "input" else verdict.response_label
    return label == "unsafe"


def _safe(verdict: ParsedVerdict, stage: Stage) -> ParsedVerdict:
    """A confident-safe local verdict: the stage's label safe, no categories."""
    if stage == "input":
        return replace(verdict, prompt_label="safe", categories=())
    return replace(verdict, response_label="safe", categories=())
