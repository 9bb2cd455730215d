"""`guardline_limits_decisions_total{outcome}` in the app's registry: admitted,
rejected_requests, rejected_tokens, rejected_concurrency, rejected_guard_checks, degraded
(Redis down, fail-open), unavailable (Redis down, fail-closed).

A Counter the limiter increments as it decides (not a collector reading `Limiter.counts` at
scrape time): a Counter adds up across the worker processes of `guardline serve --workers N`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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


def register(limiter: Limiter, registry: CollectorRegistry) -> None:
    decisions = Counter(
        "guardline_limits_decisions",
        "Rate-limit decisions by outcome (degraded: Redis unreachable, served unlimited)",
        ["outcome"],
        registry=registry,
    )
    # Every outcome from the start (at 0), as before: a dashboard sees the series exist.
    children = {outcome: decisions.labels(outcome) for outcome in OUTCOMES}

    def count(outcome: str) -> None:
        child = children.get(outcome)
        if child is None:  # an outcome added to the limiter but not listed here
            child = children[outcome] = decisions.labels(outcome)
        child.inc()

    limiter.on_outcome = count
