"""One limit across replicas: 3 `guardline serve` processes share one redis-server; a tenant
limited to R requests per minute, driven with 3R requests spread over the three, gets R."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.limits.helpers import CHAT, KEYS, auth
from tests.proxy.test_e2e_serve import ROOT, SERVE, free_port
from tests.redis_server import RedisServer

R = 30
REPLICAS = 3


def _config(tmp_path: Path, double_url: str, redis_url: str) -> Path:
    (tmp_path / "off.yaml").write_text(
        "name: passthrough\ndescription: no checks\ninput: {enabled: false}\n"
        "output: {enabled: false}\non_guard_error: open\n"
    )
    config = tmp_path / "config.yaml"
    tenants = "".join(f"    {name}: {{keys: ['{key}']}}\n" for name, key in KEYS.items())
    config.write_text(
        # A remote guard nobody calls (the policy checks nothing): no model to load.
        "default_guard: remote\n"
        "guards:\n  remote: {type: sglang, base_url: 'http://127.0.0.1:9'}\n"
        f"upstreams:\n  double: {{type: openai, base_url: '{double_url}', api_key: sk-up}}\n"
        "routes:\n  - {name: default, upstream: double, policy: off.yaml}\n"
        f"auth:\n  tenants:\n{tenants}"
        f"limits:\n  redis_url: '{redis_url}'\n"
        f"  tenants:\n    acme: {{requests_per_minute: {R}}}\n"
        "audit: {enabled: false}\n"
    )
    return config


def _start(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--config", str(config), "--port", str(port)], cwd=ROOT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "guardline serve exited"
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "guardline serve did not start"
        time.sleep(0.1)


def test_three_replicas_share_one_requests_per_minute_limit(
    tmp_path: Path, double_url: str, redis_server: RedisServer
) -> None:
    config = _config(tmp_path, double_url, redis_server.url)
    replicas = [_start(config) for _ in range(REPLICAS)]
    try:
        for proc, base in replicas:
            _wait_healthy(proc, base)
        bases = [base for _, base in replicas]

        def one(i: int) -> int:
            response = httpx.post(
                bases[i % REPLICAS] + "/v1/chat/completions", json=CHAT, headers=auth(), timeout=60
            )
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "rate_limit_exceeded"
            return response.status_code

        with ThreadPoolExecutor(max_workers=9) as pool:
            statuses = list(pool.map(one, range(3 * R)))
        accepted = statuses.count(200)
        assert statuses.count(429) == 3 * R - accepted
        assert R * 0.95 <= accepted <= R * 1.05, accepted
        # Each replica admitted some: the limit is the shared one, not one per process.
        per_replica = [
            sum(1 for i, s in enumerate(statuses) if s == 200 and i % REPLICAS == r)
            for r in range(REPLICAS)
        ]
        assert all(per_replica), per_replica
        # Every replica's /metrics counts its own decisions; together they are the run's.
        totals = {"admitted": 0.0, "rejected_requests": 0.0}
        for base in bases:
            for line in httpx.get(base + "/metrics").text.splitlines():
                for outcome in totals:
                    if line.startswith(f'guardline_limits_decisions_total{{outcome="{outcome}"}}'):
                        totals[outcome] += float(line.rsplit(" ", 1)[1])
        assert totals == {"admitted": accepted, "rejected_requests": 3 * R - accepted}
    finally:
        for proc, _ in replicas:
            proc.terminate()
        for proc, _ in replicas:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
