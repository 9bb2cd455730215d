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

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import generate_latest

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
