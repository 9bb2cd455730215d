"""The timing ledger: overhead is total minus the union of guard and upstream intervals."""

from __future__ import annotations

import pytest

from proxy.timing import RequestTiming


def _parse(header: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in header.split(", "):
        name, _, dur = part.partition(";dur=")
        out[name] = float(dur)
    return out


def test_serial_intervals_are_subtracted() -> None:
    t = RequestTiming(start=0.0)
    t.add("guard-input", 0.001, 0.011)  # 10 ms
    t.add("upstream", 0.012, 0.112)  # 100 ms
    t.add("guard-output", 0.113, 0.123)  # 10 ms
    t.finish(0.125)
    assert t.overhead_ms() == pytest.approx(5.0)
    assert _parse(t.server_timing()) == {
        "guard-input": 10.0,
        "upstream": 100.0,
        "guard-output": 10.0,
        "overhead": 5.0,
    }


def test_parallel_input_check_is_not_subtracted_twice() -> None:
    t = RequestTiming(start=0.0)
    t.add("guard-input", 0.001, 0.031)  # 30 ms, entirely inside the upstream call
    t.add("upstream", 0.001, 0.101)
    t.finish(0.102)
    # union = [0.001, 0.101] = 100 ms, total 102 ms
    assert t.overhead_ms() == pytest.approx(2.0)
    assert t.seconds("guard-input") == pytest.approx(0.030)


def test_partial_overlap_and_holdback_windows() -> None:
    t = RequestTiming(start=10.0)
    t.add("upstream", 10.010, 10.200)
    t.add("guard-output", 10.150, 10.250)  # overlaps the end of the stream
    t.add("guard-output", 10.240, 10.260)  # window overlapping the previous window
    t.add("guard-input", 10.000, 10.005)
    t.finish(10.300)
    # union: [10.000,10.005] + [10.010,10.260] = 5 + 250 ms; total 300 ms
    assert t.overhead_ms() == pytest.approx(45.0)
    assert t.seconds("guard-output") == pytest.approx(0.110)
    assert list(_parse(t.server_timing())) == [
        "guard-input",
        "upstream",
        "guard-output",
        "overhead",
    ]


def test_intervals_outside_the_request_are_clipped() -> None:
    t = RequestTiming(start=1.0)
    t.add("upstream", 0.5, 1.5)  # started before the ledger (clipped to start)
    t.add("guard-output", 1.9, 2.5)  # ran past the end (clipped to end)
    t.finish(2.0)
    assert t.overhead_ms() == pytest.approx(400.0)


def test_empty_and_degenerate() -> None:
    t = RequestTiming(start=0.0)
    t.add("upstream", 0.5, 0.5)  # zero length: ignored
    t.finish(0.001)
    t.finish(5.0)  # a second finish does not move the end
    assert t.server_timing() == "overhead;dur=1.00"
    assert t.durations_ms() == {"overhead": 1.0, "total": 1.0}


def test_measure_records_even_on_error() -> None:
    t = RequestTiming()
    with pytest.raises(RuntimeError), t.measure("upstream"):
        raise RuntimeError("boom")
    t.finish()
    assert t.seconds("upstream") > 0
    assert 0 <= t.overhead_seconds() <= t.total_seconds()
