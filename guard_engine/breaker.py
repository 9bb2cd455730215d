"""A circuit breaker for a remote guard: stop waiting on a guard that keeps failing.

closed ──N consecutive failures──▶ open ──reset_s elapsed──▶ half_open ──probe ok──▶ closed
                                     ▲                          │
                                     └──────probe failed────────┘

Only infrastructure failures count (timeouts, unavailable). An unparseable answer proves the
guard is up, so it counts as a success for the breaker. While open, calls are rejected
immediately (the caller's `on_guard_error` decides what that means); once `reset_s` has passed
exactly ONE call is let through as a probe, the others stay rejected until it reports.

Single event loop, no awaits inside: no lock needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be >= 1")
        if reset_s <= 0:
            raise ValueError("reset_s must be > 0")
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state this claims the single probe slot; the
        caller must then report `record_success`, `record_failure` or `release`."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self._clock()  # (re)open: a failed probe restarts the wait
        self._probing = False

    def release(self) -> None:
        """The call ended without telling anything about the guard (e.g. it was cancelled):
        free the probe slot so that the next call can probe."""
        self._probing = False

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_s - self._clock())

    def describe(self) -> str:
        """One line for /readyz and health details."""
        state = self.state
        if state == "closed":
            if self._consecutive:
                return f"closed ({self._consecutive}/{self.failures} consecutive failures)"
            return "closed"
        if state == "open":
            return f"open ({self._consecutive} failures, retry in {self.retry_in():.1f} s)"
        return "half_open (probe in flight)" if self._probing else "half_open (next call probes)"
