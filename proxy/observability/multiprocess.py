"""Prometheus metrics shared by the worker processes of one `guardline serve --workers N`.

Each worker is its own process with its own counters; a scrape reaches one of them. In
prometheus_client's multiprocess mode every worker writes its values to memory-mapped files in
`PROMETHEUS_MULTIPROC_DIR`, and the worker that answers `/metrics` reads all the files, so every
worker's counts appear once whichever answers. `guardline serve` makes one fresh directory per
run (stale files of an earlier run would be counted again) and removes it when the run ends.

The variable must be set before a worker imports prometheus_client (the value class is chosen
at import): uvicorn spawns its workers, so setting it in the parent before `uvicorn.run` is
enough. One process (`--workers 1`) keeps the ordinary in-memory metrics.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def enabled() -> bool:
    """True in a worker of a multi-process run (its metrics go to the shared directory)."""
    return bool(os.environ.get(MULTIPROC_ENV))


@contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """A fresh directory for the workers' metric files, announced in the environment the
    workers inherit; removed (and the variable restored) afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="guardline-metrics-"))
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def render_all_workers() -> bytes:
    """The text exposition of every worker's metrics, each counted once (live or exited:
    counters and histograms of an exited worker stay in the total; `live*` gauges do not)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def mark_this_worker_dead() -> None:
    """At a worker's shutdown: drop its `live*` gauge files so a gone worker's gauges (its
    breaker states) stop being reported."""
    if enabled():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


# How often each worker copies its collector-read values into the shared files; a scrape
# also copies the answering worker's at once. Another worker's counts are at most this late.
MIRROR_INTERVAL_S: Final = 1.0


class CollectorMirror:
    """Some metrics are read from live objects when /metrics is scraped (a cascade guard's
    answer counts, the shared cache's lookups: guard_engine counts, it does not import
    prometheus_client). Such collectors see only the worker a scrape reaches, and the
    multiprocess exposition reads only the shared files. In a multi-worker run this copies
    their values into file-backed metrics of the same names: counters by what they grew since
    the last copy (so every worker's counts add up once), gauges as the largest value of the
    live workers (`livemax`: e.g. a suspended cascade in any worker shows as suspended)."""

    def __init__(self, collectors: list[Collector]) -> None:
        self._collectors = collectors
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._copied: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def sync(self) -> None:
        for collector in self._collectors:
            for family in collector.collect():
                for sample in family.samples:
                    if family.type == "counter" and sample.name.endswith("_total"):
                        key = (sample.name, tuple(sorted(sample.labels.items())))
                        grown = sample.value - self._copied.get(key, 0.0)
                        self._copied[key] = sample.value
                        if grown > 0:
                            _child(self._counter(family, sample.labels), sample.labels).inc(grown)
                    elif family.type == "gauge":
                        _child(self._gauge(family, sample.labels), sample.labels).set(sample.value)

    def _counter(self, family: Metric, labels: dict[str, str]) -> Counter:
        metric = self._counters.get(family.name)
        if metric is None:
            metric = self._counters[family.name] = Counter(
                family.name, family.documentation, list(labels), registry=None
            )
        return metric

    def _gauge(self, family: Metric, labels: dict[str, str]) -> Gauge:
        metric = self._gauges.get(family.name)
        if metric is None:
            metric = self._gauges[family.name] = Gauge(
                family.name,
                family.documentation,
                list(labels),
                registry=None,
                multiprocess_mode="livemax",
            )
        return metric

    async def run(self) -> None:
        """Copy every MIRROR_INTERVAL_S until cancelled (then once more: the last counts)."""
        try:
            while True:
                await asyncio.sleep(MIRROR_INTERVAL_S)
                self.sync()
        finally:
            self.sync()


M = TypeVar("M", Counter, Gauge)


def _child(metric: M, labels: dict[str, str]) -> M:
    return metric.labels(**labels) if labels else metric
