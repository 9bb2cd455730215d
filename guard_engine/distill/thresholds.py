"""The cascade's two thresholds for a target agreement, and what they do on other data.

A cascade answers locally when the head's score is at or below `low` (safe) or at or above
`high` (unsafe) and asks the model guard otherwise. `choose_thresholds` picks, on decisions
the head was not trained on, the widest band of locally answered scores whose answers agree
with the model guard at least `target` of the time on each side: `low` is the largest score
such that the decisions scored at or below it are at least `target` safe, `high` the
smallest such that those at or above it are at least `target` unsafe. Each side meeting the
target means the local answers together meet it too. When the two bands overlap (a loose
target), every check is answered locally, split at the best single cut.

Those numbers are then measured (`local_answers`) on decisions the thresholds were not chosen
on: a threshold chosen and measured on the same data flatters itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guard_engine.backends.distilled_head import MODEL_GUARD_ONLY, Thresholds

F32 = npt.NDArray[np.float32]
JUST_BELOW_ONE = float(np.nextafter(1.0, 0.0))


def choose_thresholds(scores: F32, labels: F32, target: float) -> Thresholds:
    """`labels` are the model guard's (1 unsafe). With no data, nothing is answered locally."""
    if scores.size == 0:
        return MODEL_GUARD_ONLY
    order = np.argsort(scores, kind="stable")
    s = scores[order].astype(np.float64)
    y = labels[order].astype(np.float64)
    n = s.size
    # A cut may only fall between distinct scores: equal scores are answered alike.
    last_of_value = np.append(s[1:] != s[:-1], True)
    first_of_value = np.insert(s[1:] != s[:-1], 0, True)
    safe_share = np.cumsum(1.0 - y) / np.arange(1, n + 1)  # of the k lowest
    low_ok = np.flatnonzero((safe_share >= target) & last_of_value)
    unsafe_share = np.cumsum(y[::-1])[::-1] / np.arange(n, 0, -1)  # of those from k on
    high_ok = np.flatnonzero((unsafe_share >= target) & first_of_value)
    # A side that never meets the target gets the end of the scale, which means "never"
    # (Thresholds); a real cut at a saturated score of 1.0 becomes the float just below it.
    low = float(s[low_ok[-1]]) if low_ok.size else 0.0
    high = min(float(s[high_ok[0]]), JUST_BELOW_ONE) if high_ok.size else 1.0
    if high <= low:
        # The bands overlap: every check can be answered locally at this target. One cut
        # between them then decides, the one with the fewest disagreements.
        inside = np.flatnonzero((s >= high) & (s <= low) & last_of_value)
        unsafe_below = np.cumsum(y)  # unsafe at or below each cut
        safe_above = np.sum(1.0 - y) - np.cumsum(1.0 - y)
        best = inside[int(np.argmin(unsafe_below[inside] + safe_above[inside]))]
        return Thresholds(low=float(s[best]), high=float(s[best]))
    return Thresholds(low=low, high=high)


@dataclass(frozen=True, slots=True)
class LocalAnswers:
    checks: int  # decisions measured
    local: int  # answered locally at the thresholds
    agreeing: int  # local answers equal to the model guard's

    @property
    def share(self) -> float:
        return self.local / self.checks if self.checks else 0.0

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.local if self.local else None

    def __add__(self, other: LocalAnswers) -> LocalAnswers:
        return LocalAnswers(
            self.checks + other.checks, self.local + other.local, self.agreeing + other.agreeing
        )


def local_answers(scores: F32, labels: F32, thresholds: Thresholds) -> LocalAnswers:
    """How many checks the head answers locally at `thresholds`, and how many of those agree
    with the model guard."""
    # The same rule as Thresholds.local_label, on arrays.
    safe = (scores <= thresholds.low) & (thresholds.low > 0.0)
    unsafe = (scores >= thresholds.high) & (thresholds.high < 1.0) & ~safe
    agreeing = int(np.sum(safe & (labels == 0)) + np.sum(unsafe & (labels == 1)))
    return LocalAnswers(int(scores.size), int(np.sum(safe | unsafe)), agreeing)
