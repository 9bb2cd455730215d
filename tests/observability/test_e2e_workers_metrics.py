"""`guardline serve --workers 2`: /metrics reports every worker's counts, once, whichever
worker answers the scrape (prometheus_client's multiprocess mode, set up by `serve` in a
directory of its own that is removed when the gateway exits)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.observability.multiprocess import MIRROR_INTERVAL_S
from tests.proxy.conftest import double_server, double_url
from tests.proxy.test_e2e_serve import ROOT, SERVE, free_port
from tests.redis_server import RedisServer, redis_server

__all__ = ["double_server", "double_url", "redis_server"]  # fixtures used below

REQUESTS = 60
SCRAPES = 12
GENEROUS = 120.0  # seconds; only bounds a hang, never measures speed
REQUESTS_SAMPLE = "guardline_requests_total"


def _config(tmp_path: Path, double_url: str) -> Path:
    (tmp_path / "off.yaml").write_text(
        "name: passthrough\ndescription: no checks\ninput: {enabled: false}\n"
        "output: {enabled: false}\non_guard_error: open\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"upstreams:\n  double: {{type: openai, base_url: '{double_url}', api_key: sk-up}}\n"
        "routes:\n  - {name: default, upstream: double, policy: off.yaml}\n"
        "audit: {enabled: false}\n"
    )
    return config


def _chat_requests(scrape: str) -> float:
    """The request counter of the chat route, summed over status codes."""
    total = 0.0
    for line in scrape.splitlines():
        if line.startswith(REQUESTS_SAMPLE + "{") and 'route="default"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _per_worker(metrics_dir: Path) -> dict[str, float]:
    """The chat requests each worker counted, read from its own file."""
    served: dict[str, float] = defaultdict(float)
    for path in metrics_dir.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == REQUESTS_SAMPLE and sample.labels.get("route") == "default":
                    served[pid] += sample.value
    return dict(served)


def test_metrics_count_every_worker_once(tmp_path: Path, double_url: str) -> None:
    temp = tmp_path / "tmp"  # where `serve` makes its metrics directory (TMPDIR)
    temp.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*SERVE, "--config", str(_config(tmp_path, double_url)), "--port", str(port),
         "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + GENEROUS
        while True:
            assert proc.poll() is None, "guardline serve exited"
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "guardline serve did not start"
            time.sleep(0.1)
        (metrics_dir,) = temp.iterdir()

        def one(i: int) -> int:
            body = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}
            # A new connection each time: the kernel hands it to either worker.
            response = httpx.post(base + "/v1/chat/completions", json=body, timeout=GENEROUS)
            return response.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(one, range(REQUESTS))) == {200}

        served = _per_worker(metrics_dir)
        assert len(served) == 2 and all(served.values()), served  # both workers took requests
        assert sum(served.values()) == REQUESTS
        for _ in range(SCRAPES):  # new connections: different workers answer
            scrape = httpx.get(base + "/metrics")
            assert scrape.status_code == 200
            assert _chat_requests(scrape.text) == REQUESTS

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GENEROUS) in (0, -signal.SIGTERM)
        assert list(temp.iterdir()) == []  # the run's metrics directory is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _shared_cache_lookups(scrape: str) -> float:
    """Lookups of every outcome: a miss, or `unavailable` when a loaded machine makes Redis
    slower than the cache's 50 ms timeout (the prompts are new: never a hit)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line.startswith("guardline_shared_cache_lookups_total{")
    )


def test_collector_metrics_count_every_worker_once(
    tmp_path: Path, double_url: str, redis_server: RedisServer
) -> None:
    """Metrics read from live objects at scrape time (here the shared verdict cache's lookups,
    counted in guard_engine) are copied into the shared files: every worker's lookups appear,
    once, whichever worker answers."""
    (tmp_path / "in.yaml").write_text(
        "name: input-only\ndescription: prompt checked\ninput: {enabled: true}\n"
        "output: {enabled: false}\non_guard_error: open\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"upstreams:\n  double: {{type: openai, base_url: '{double_url}', api_key: sk-up}}\n"
        "routes:\n  - {name: default, upstream: double, policy: in.yaml}\n"
        "audit: {enabled: false}\n"
        f"cache: {{redis_url: '{redis_server.url}'}}\n"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*SERVE, "--config", str(config), "--port", str(port), "--workers", "2"], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + GENEROUS
        while True:
            assert proc.poll() is None, "guardline serve exited"
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "guardline serve did not start"
            time.sleep(0.2)

        def one(i: int) -> int:
            body = {"model": "m", "messages": [{"role": "user", "content": f"hello number {i}"}]}
            response = httpx.post(base + "/v1/chat/completions", json=body, timeout=GENEROUS)
            return response.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(one, range(40))) == {200}
        # Every prompt is new: one shared-cache lookup in whichever worker judged it.
        # A worker copies its counts every MIRROR_INTERVAL_S (later on a busy machine): wait
        # until a scrape shows them all, then every scrape must.
        deadline = time.monotonic() + GENEROUS
        while _shared_cache_lookups(text := httpx.get(base + "/metrics").text) != 40:
            lines = [x for x in text.splitlines() if x.startswith("guardline_shared_cache")]
            assert time.monotonic() < deadline, f"never 40 lookups in all: {lines}"
            time.sleep(MIRROR_INTERVAL_S / 2)
        for _ in range(SCRAPES):
            scrape = httpx.get(base + "/metrics")
            assert scrape.status_code == 200
            assert _shared_cache_lookups(scrape.text) == 40
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GENEROUS) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
