"""Drift of a cascade guard's local answers, measured by the model guard re-checking a sample.

A distilled head agrees with the model guard on the data it was measured on; traffic changes
(a new product, a new attack, a policy edit the head never saw). So a random sample of locally
answered checks is judged again by the model guard, and the share of disagreements over the
last `window` re-checks is kept. Once `min_rechecks` re-checks are in and that share exceeds
`max_disagreement`, local answers are suspended for good: the monitor never un-suspends on its
own, because the disagreement could only fall again by re-checking local answers that are no
longer given. A config reload or a restart (a new backend) starts afresh.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DriftSettings:
    recheck_sample: float  # share of local answers re-checked, 0..1
    min_rechecks: int  # re-checks needed before the disagreement can suspend local answers
    window: int  # the disagreement is measured over this many most recent re-checks
    max_disagreement: float  # above this share, local answers are suspended

    def __post_init__(self) -> None:
        if not 0.0 <= self.recheck_sample <= 1.0 or not 0.0 <= self.max_disagreement <= 1.0:
            raise ValueError("recheck_sample and max_disagreement must be within 0..1")
        if not 1 <= self.min_rechecks <= self.window:
            raise ValueError("drift needs 1 <= min_rechecks <= window")


@dataclass(frozen=True, slots=True)
class DriftStats:
    agreed: int
    disagreed: int
    failed: int  # the model guard failed the re-check: no evidence either way
    dropped: int  # not re-checked because too many re-checks were already running
    disagreement: float | None  # over the window; None before the first re-check
    in_window: int
    suspended: str | None  # why local answers are suspended, or None


class DriftMonitor:
    """Counts re-check outcomes and decides when local answers must stop."""

    def __init__(self, settings: DriftSettings, *, draw: Callable[[], float] = random.random):
        self.settings = settings
        self._draw = draw
        self._recent: deque[bool] = deque(maxlen=settings.window)  # True: disagreed
        self._agreed = 0
        self._disagreed = 0
        self._failed = 0
        self._dropped = 0
        self.suspended: str | None = None

    def wants_recheck(self) -> bool:
        sample = self.settings.recheck_sample
        return self.suspended is None and sample > 0 and self._draw() < sample

    def dropped(self) -> None:
        self._dropped += 1

    def failed(self) -> None:
        self._failed += 1

    def record(self, *, agree: bool) -> None:
        if agree:
            self._agreed += 1
        else:
            self._disagreed += 1
        self._recent.append(not agree)
        if self.suspended is not None or len(self._recent) < self.settings.min_rechecks:
            return
        share = self.disagreement
        if share is not None and share > self.settings.max_disagreement:
            self.suspended = (
                f"disagreement with the model guard {share:.3f} over the last "
                f"{len(self._recent)} re-checks > max_disagreement "
                f"{self.settings.max_disagreement:g}"
            )

    @property
    def disagreement(self) -> float | None:
        if not self._recent:
            return None
        return sum(self._recent) / len(self._recent)

    def stats(self) -> DriftStats:
        return DriftStats(
            agreed=self._agreed,
            disagreed=self._disagreed,
            failed=self._failed,
            dropped=self._dropped,
            disagreement=self.disagreement,
            in_window=len(self._recent),
            suspended=self.suspended,
        )
