"""DriftMonitor: sampling, the window, min_rechecks, and a suspension that never lifts."""

from __future__ import annotations

import pytest

from guard_engine.backends.cascade_drift import DriftMonitor, DriftSettings


def settings(**kw: float) -> DriftSettings:
    values: dict[str, float] = {
        "recheck_sample": 0.5, "min_rechecks": 4, "window": 4, "max_disagreement": 0.25, **kw
    }  # fmt: skip
    return DriftSettings(
        recheck_sample=values["recheck_sample"],
        min_rechecks=int(values["min_rechecks"]),
        window=int(values["window"]),
        max_disagreement=values["max_disagreement"],
    )


def test_the_sample_follows_the_draw() -> None:
    draws = iter([0.1, 0.9, 0.49, 0.5])
    monitor = DriftMonitor(settings(), draw=lambda: next(draws))
    assert [monitor.wants_recheck() for _ in range(4)] == [True, False, True, False]
    assert not DriftMonitor(settings(recheck_sample=0.0), draw=lambda: 0.0).wants_recheck()


def test_disagreement_is_over_the_window_and_waits_for_min_rechecks() -> None:
    monitor = DriftMonitor(settings(min_rechecks=3, window=4), draw=lambda: 0.0)
    monitor.record(agree=False)
    monitor.record(agree=False)
    assert monitor.suspended is None  # 100% but only 2 re-checks in
    monitor.record(agree=True)
    assert monitor.suspended is not None and "0.667 over the last 3" in monitor.suspended
    assert not monitor.wants_recheck()  # nothing local left to re-check


def test_old_disagreements_leave_the_window() -> None:
    monitor = DriftMonitor(settings(min_rechecks=4, window=4, max_disagreement=0.25))
    monitor.record(agree=False)
    for _ in range(4):
        monitor.record(agree=True)
    stats = monitor.stats()
    assert (stats.disagreement, stats.in_window, stats.disagreed) == (0.0, 4, 1)
    monitor.record(agree=False)  # 1 of 4 = 0.25: not above
    assert monitor.suspended is None
    monitor.record(agree=False)  # 2 of 4
    assert monitor.suspended is not None
    for _ in range(10):
        monitor.record(agree=True)
    assert monitor.suspended is not None  # only a reload or a restart lifts it


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        settings(min_rechecks=5, window=4)
    with pytest.raises(ValueError):
        settings(recheck_sample=1.5)
