"""Prometheus metrics of the gateway, in a registry the app owns (never the global default one).

Every method takes explicit arguments so that the request path calls one cheap method per fact
(a label lookup and an add, about a microsecond). `render()` produces the `/metrics` body.

With several worker processes (`guardline serve --workers N`) the values live in shared files
and `render()` reads every worker's (`proxy/observability/multiprocess.py`). Only the metric
classes (Counter, Gauge, Histogram) work across processes: no custom collectors here (those
of guard_engine's counts are copied into the shared files by `multiprocess.CollectorMirror`),
and every Gauge names its `multiprocess_mode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from proxy.observability import multiprocess

M = TypeVar("M", bound=MetricWrapperBase)

BreakerState = Literal["closed", "half-open", "open"]
BREAKER_VALUES: Final[dict[str, int]] = {"closed": 0, "half-open": 1, "open": 2}

# Latency buckets in seconds. Overhead is sub-millisecond when healthy, so it gets fine buckets.
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
GUARD_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OVERHEAD_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
HOLDBACK_BUCKETS: Final = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Children:
    """Labelled children by label values: `metric.labels()` validates and locks on every call;
    a dict hit does not. The label sets are as bounded as the metric's own children."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}

    def get(self, metric: M, *values: str) -> M:
        key = (id(metric), values)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*values)
        return child  # type: ignore[return-value]


class GatewayMetrics:
    """All guardline metrics, named `guardline_*`, in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, prefix: str = "guardline"):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        p = prefix
        self._children = _Children()
        self.requests = Counter(
            f"{p}_requests", "Requests by route and HTTP status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            f"{p}_request_seconds",
            "Request latency seen by the client (first byte in to last byte out)",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.guard_seconds = Histogram(
            f"{p}_guard_seconds",
            "Guard check latency by guard and stage (input, output, holdback, think)",
            ["guard", "stage"],
            buckets=GUARD_BUCKETS,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            f"{p}_overhead_seconds",
            "Proxy overhead: total minus the union of upstream and guard time (Server-Timing)",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            f"{p}_verdicts",
            "Guard decisions by policy, stage, verdict and category "
            "(a decision with several categories counts once per category; safe: category='none')",
            ["policy", "stage", "verdict", "category"],
            registry=r,
        )
        self.degraded = Counter(
            f"{p}_degraded",
            "Decisions taken without the configured guard (on_guard_error open/fallback)",
            ["policy", "stage", "reason"],
            registry=r,
        )
        self.breaker_state = Gauge(
            f"{p}_breaker_state",
            "Guard circuit breaker: 0 closed, 1 half-open, 2 open",
            ["guard"],
            registry=r,
            # Several workers: each has its own breaker, sampled when it answers a scrape.
            # The worst state among the running workers is what an alert needs; an exited
            # worker's state is dropped (multiprocess.mark_this_worker_dead).
            multiprocess_mode="livemax",
        )
        self.cache_hits = Counter(f"{p}_cache_hits", "Verdict cache hits", ["guard"], registry=r)
        self.cache_misses = Counter(
            f"{p}_cache_misses", "Verdict cache misses", ["guard"], registry=r
        )
        self.holdback_checks = Histogram(
            f"{p}_holdback_checks",
            "Guard checks made for one streamed response (hold-back windows)",
            buckets=HOLDBACK_BUCKETS,
            registry=r,
        )
        self.audit_dropped = Counter(
            f"{p}_audit_dropped",
            "Audit records dropped (writer queue full or write failed)",
            registry=r,
        )
        self.audit_written = Counter(
            f"{p}_audit_written", "Audit records written to the store", registry=r
        )
        self.audit_store_retries = Counter(
            f"{p}_audit_store_retries",
            "Audit store writes retried because the store was unreachable (PostgreSQL down)",
            registry=r,
        )
        self.think_checks = Counter(
            f"{p}_think_checks",
            "Background THINK re-checks by policy and result (agree, disagree, error, dropped)",
            ["policy", "result"],
            registry=r,
        )
        self.think_disagreements = Counter(
            f"{p}_think_disagreements",
            "THINK re-checks whose verdict differs from the fast verdict",
            ["policy"],
            registry=r,
        )
        self.shadow_checks = Counter(
            f"{p}_shadow_checks",
            "Shadow policy decisions compared with the enforced ones, by result "
            "(agree, disagree, error)",
            ["policy", "shadow", "stage", "result"],
            registry=r,
        )
        self.policy_reload = Counter(
            f"{p}_policy_reload",
            "Policy hot reloads by result (ok, error)",
            ["result"],
            registry=r,
        )

    # --- request path -------------------------------------------------------------------------

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self._children.get(self.requests, route, str(status)).inc()
        self._children.get(self.request_seconds, route).observe(seconds)

    def observe_overhead(self, seconds: float) -> None:
        self.overhead_seconds.observe(seconds)

    def observe_guard(self, guard: str, stage: str, seconds: float) -> None:
        self._children.get(self.guard_seconds, guard, stage).observe(seconds)

    def observe_verdict(
        self, policy: str, stage: str, verdict: str, categories: Sequence[str] = ()
    ) -> None:
        """One decision. `policy` is the policy name (not name@hash: a reload must not reset it)."""
        if not categories:
            self._children.get(self.verdicts, policy, stage, verdict, "none").inc()
            return
        for category in categories:
            self._children.get(self.verdicts, policy, stage, verdict, category).inc()

    def observe_degraded(self, policy: str, stage: str, reason: str) -> None:
        self._children.get(self.degraded, policy, stage, reason).inc()

    def observe_cache(self, guard: str, hit: bool) -> None:
        self._children.get(self.cache_hits if hit else self.cache_misses, guard).inc()

    def observe_holdback_checks(self, checks: int) -> None:
        self.holdback_checks.observe(checks)

    # --- background components ----------------------------------------------------------------

    def set_breaker_state(self, guard: str, state: BreakerState) -> None:
        self._children.get(self.breaker_state, guard).set(BREAKER_VALUES[state])

    def audit_records_dropped(self, count: int = 1) -> None:
        self.audit_dropped.inc(count)

    def audit_records_written(self, count: int) -> None:
        self.audit_written.inc(count)

    def audit_store_retried(self) -> None:
        self.audit_store_retries.inc()

    def observe_think(self, policy: str, result: str) -> None:
        self._children.get(self.think_checks, policy, result).inc()
        if result == "disagree":
            self._children.get(self.think_disagreements, policy).inc()

    def observe_shadow(self, policy: str, shadow: str, stage: str, result: str) -> None:
        """One shadow comparison; `result="disagree"` counts the shadow disagreements."""
        self._children.get(self.shadow_checks, policy, shadow, stage, result).inc()

    def observe_policy_reload(self, result: Literal["ok", "error"]) -> None:
        self._children.get(self.policy_reload, result).inc()

    # --- exposition ---------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition: of this registry, or, in a multi-worker run, of
        every worker's metrics (each once). (body, content type)."""
        if multiprocess.enabled():
            return multiprocess.render_all_workers(), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
