"""Cascade guard metrics, read from each cascade backend at scrape time.

guard_engine never imports proxy, so a cascade only counts (`CascadeBackend.stats()`); this
collector turns those counts into Prometheus families when /metrics is scraped. Nothing runs on
the request path.

    guardline_cascade_answers_total{guard, policy, answered_by, stage}   who answered each check
    guardline_cascade_local_unavailable_total{guard}             local scorer busy or broken
    guardline_cascade_rechecks_total{guard, result}              agree | disagree | failed | dropped
    guardline_cascade_disagreement{guard}                        share over the drift window
    guardline_cascade_local_suspended{guard}                     1 once drift stopped local answers
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from guard_engine.backends.cascade import CascadeBackend
from guard_engine.engine import GuardEngine

PREFIX = "guardline_cascade"


class CascadeCollector(Collector):
    def __init__(self, engine: GuardEngine) -> None:
        self._engine = engine

    def describe(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        # Names only: the registry checks them for clashes without reading any backend.
        return list(_families())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        answers, unavailable, rechecks, disagreement, suspended = _families()
        for name, backend in self._engine.guards.items():
            if not isinstance(backend, CascadeBackend):
                continue
            stats = backend.stats()
            for (policy, answered_by, stage), count in sorted(stats.answers.items()):
                answers.add_metric([name, policy, f"{name}/{answered_by}", stage], count)
            unavailable.add_metric([name], stats.local_unavailable)
            drift = stats.drift
            for result, count in (
                ("agree", drift.agreed),
                ("disagree", drift.disagreed),
                ("failed", drift.failed),
                ("dropped", drift.dropped),
            ):
                rechecks.add_metric([name, result], count)
            if drift.disagreement is not None:
                disagreement.add_metric([name], drift.disagreement)
            suspended.add_metric([name], 0 if drift.suspended is None else 1)
        yield from (answers, unavailable, rechecks, disagreement, suspended)


def _families() -> tuple[
    CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily,
    GaugeMetricFamily,
]:  # fmt: skip
    return (
        CounterMetricFamily(
            f"{PREFIX}_answers",
            "Checks a cascade guard answered, by policy, who answered (<cascade>/local or "
            "<cascade>/<model guard>) and stage",
            labels=["guard", "policy", "answered_by", "stage"],
        ),
        CounterMetricFamily(
            f"{PREFIX}_local_unavailable",
            "Checks the cascade's local scorer could not take (overloaded or not loaded); "
            "the model guard answered them",
            labels=["guard"],
        ),
        CounterMetricFamily(
            f"{PREFIX}_rechecks",
            "Background re-checks of local answers by the model guard, by result",
            labels=["guard", "result"],
        ),
        GaugeMetricFamily(
            f"{PREFIX}_disagreement",
            "Share of the last drift.window re-checks where the model guard disagreed",
            labels=["guard"],
        ),
        GaugeMetricFamily(
            f"{PREFIX}_local_suspended",
            "1 when drift suspended the cascade's local answers (until reload or restart)",
            labels=["guard"],
        ),
    )
