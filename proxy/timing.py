"""The per-request timing ledger: where a request's time went, and what the proxy itself cost.

overhead = total - |union of upstream and guard intervals|. Overlaps are merged, so a parallel
input check (guard running while the upstream already works) is not subtracted twice. The same
number goes to `Server-Timing` (per request) and to the overhead histogram (in aggregate).
All times are `time.perf_counter()` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Literal

Kind = Literal["guard-input", "upstream", "guard-output"]
KINDS: Final[tuple[Kind, ...]] = ("guard-input", "upstream", "guard-output")


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    if not intervals:
        return 0.0
    ordered = sorted(intervals)
    covered = 0.0
    current_start, current_end = ordered[0]
    for start, end in ordered[1:]:
        if start > current_end:
            covered += current_end - current_start
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    return covered + (current_end - current_start)


class RequestTiming:
    """Intervals of guard and upstream work within one request. Not thread-safe: one request."""

    __slots__ = ("_intervals", "end", "start")

    def __init__(self, start: float | None = None) -> None:
        self.start: float = time.perf_counter() if start is None else start
        self.end: float | None = None
        self._intervals: list[tuple[Kind, float, float]] = []

    def add(self, kind: Kind, start: float, end: float) -> None:
        """Record that `kind` work ran from `start` to `end` (clipped to the request later)."""
        if end > start:
            self._intervals.append((kind, start, end))

    @contextmanager
    def measure(self, kind: Kind) -> Iterator[None]:
        """`with timing.measure("upstream"): ...` records the block's interval, even on error."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, started, time.perf_counter())

    def finish(self, end: float | None = None) -> None:
        """The request is over (last byte sent). Later calls do not move the end."""
        if self.end is None:
            self.end = time.perf_counter() if end is None else end

    def total_seconds(self) -> float:
        end = self.end if self.end is not None else time.perf_counter()
        return max(0.0, end - self.start)

    def _clipped(self, kind: Kind | None = None) -> list[tuple[float, float]]:
        end = self.end if self.end is not None else time.perf_counter()
        clipped: list[tuple[float, float]] = []
        for interval_kind, start, stop in self._intervals:
            if kind is not None and interval_kind != kind:
                continue
            lo, hi = max(start, self.start), min(stop, end)
            if hi > lo:
                clipped.append((lo, hi))
        return clipped

    def seconds(self, kind: Kind) -> float:
        """Wall time spent on `kind` (its own overlaps merged, e.g. concurrent windows)."""
        return _union_seconds(self._clipped(kind))

    def overhead_seconds(self) -> float:
        return max(0.0, self.total_seconds() - _union_seconds(self._clipped()))

    def overhead_ms(self) -> float:
        return self.overhead_seconds() * 1000.0

    def durations_ms(self) -> dict[str, float]:
        """{kind: ms} for the kinds that ran, plus `overhead` and `total` (for the request log)."""
        kinds_seen = {interval[0] for interval in self._intervals}
        durations: dict[str, float] = {
            kind: round(self.seconds(kind) * 1000.0, 3) for kind in KINDS if kind in kinds_seen
        }
        durations["overhead"] = round(self.overhead_ms(), 3)
        durations["total"] = round(self.total_seconds() * 1000.0, 3)
        return durations

    def server_timing(self) -> str:
        """The `Server-Timing` header value: the kinds that ran, then the overhead."""
        kinds_seen = {interval[0] for interval in self._intervals}
        parts = [
            f"{kind};dur={self.seconds(kind) * 1000.0:.1f}" for kind in KINDS if kind in kinds_seen
        ]
        parts.append(f"overhead;dur={self.overhead_ms():.2f}")
        return ", ".join(parts)
