"""`guardline_limits_decisions_total{outcome}` in the app's registry: admitted,
rejected_requests, rejected_tokens, rejected_concurrency, rejected_guard_checks, degraded
(Redis down, fail-open), unavailable (Redis down, fail-closed)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from proxy.limits.service import Limiter

OUTCOMES = (
    "admitted",
    "rejected_requests",
    "rejected_tokens",
    "rejected_concurrency",
    "rejected_guard_checks",
    "degraded",
    "unavailable",
)


class _LimitsCollector(Collector):
    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "guardline_limits_decisions",
            "Rate-limit decisions by outcome (degraded: Redis unreachable, served unlimited)",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            family.add_metric([outcome], self._limiter.counts.get(outcome, 0))
        yield family


def register(limiter: Limiter, registry: CollectorRegistry) -> None:
    registry.register(_LimitsCollector(limiter))
