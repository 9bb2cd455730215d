"""Split decisions by request and by time: train on the oldest, choose the cascade thresholds
on the next, measure on the newest.

Measuring on newer decisions than the head learned from is how the head will be used (on
tomorrow's traffic), and it exposes drift a random split would hide. Every decision of one
request (its input check, its output checks) falls on the same side: the output checks repeat
the prompt, so splitting a request would let the head see a test prompt in training. A
request's place in time is its first decision's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    @property
    def request_id(self) -> str: ...
    @property
    def time(self) -> float: ...


T = TypeVar("T", bound=Timed)


@dataclass(frozen=True, slots=True)
class TimeSplit(Generic[T]):
    train: list[T]  # the oldest requests
    calibration: list[T]  # the next: the thresholds are chosen here
    heldout: list[T]  # the newest: the reported agreement is measured here
    calibration_from: float  # epoch seconds: first request of each later part
    heldout_from: float


def split_by_time(
    items: Sequence[T], *, calibration: float = 0.2, heldout: float = 0.2
) -> TimeSplit[T]:
    """Requests ordered by their first decision; the newest `heldout` share of requests is
    held out, the `calibration` share before it chooses the thresholds, the rest trains."""
    first: dict[str, float] = {}
    for item in items:
        if item.time < first.get(item.request_id, float("inf")):
            first[item.request_id] = item.time
    order = sorted(first, key=lambda rid: (first[rid], rid))
    n = len(order)
    n_heldout = round(n * heldout)
    n_calibration = round(n * calibration)
    n_train = n - n_heldout - n_calibration
    side = {
        rid: 0 if i < n_train else 1 if i < n_train + n_calibration else 2
        for i, rid in enumerate(order)
    }
    parts: tuple[list[T], list[T], list[T]] = ([], [], [])
    for item in items:
        parts[side[item.request_id]].append(item)

    def start(i: int) -> float:
        return first[order[i]] if i < n else float("inf")

    return TimeSplit(
        train=parts[0],
        calibration=parts[1],
        heldout=parts[2],
        calibration_from=start(n_train),
        heldout_from=start(n_train + n_calibration),
    )
