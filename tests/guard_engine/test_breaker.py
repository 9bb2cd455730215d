"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from guard_engine.breaker import CircuitBreaker


def state(b: CircuitBreaker) -> str:
    # A call, not the property: mypy would narrow `b.state` across the asserts.
    return b.state


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    b = CircuitBreaker(failures=3, reset_s=10, clock=Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # resets the streak
    b.record_failure()
    b.record_failure()
    assert state(b) == "closed"
    assert b.describe() == "closed (2/3 consecutive failures)"
    b.record_failure()
    assert state(b) == "open"
    assert not b.allow()


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_s=10, clock=clock)
    b.record_failure()
    assert b.describe() == "open (1 failures, retry in 10.0 s)"
    clock.now = 9.9
    assert not b.allow()
    clock.now = 10.0
    assert state(b) == "half_open"
    assert b.allow()
    assert not b.allow()  # the probe is in flight
    assert b.describe() == "half_open (probe in flight)"
    b.record_success()
    assert state(b) == "closed"
    assert b.allow()


def test_failed_probe_reopens_for_a_full_period() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, reset_s=10, clock=clock)
    b.record_failure()
    b.record_failure()
    clock.now = 15.0
    assert b.allow()
    b.record_failure()
    assert state(b) == "open"
    assert b.retry_in() == 10.0
    clock.now = 25.0
    assert b.allow()


def test_release_frees_the_probe_slot_without_deciding() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_s=1, clock=clock)
    b.record_failure()
    clock.now = 1.0
    assert b.allow()
    b.release()
    assert state(b) == "half_open"
    assert b.allow()


@pytest.mark.parametrize(("failures", "reset_s"), [(0, 1.0), (1, 0.0)])
def test_rejects_nonsense_settings(failures: int, reset_s: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=failures, reset_s=reset_s)
