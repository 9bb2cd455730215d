"""Gateway replicas as real `guardline serve` processes on 127.0.0.1 (as tests/limits does).

Each replica moderates with the SGLang double as its guard and calls the upstream double; the
config is the repository's default policy with nothing else shared but those two servers.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.deploy.nginx_server import free_port
from tests.proxy.test_e2e_serve import ROOT, SERVE


def write_config(tmp_path: Path, upstream_url: str, guard_url: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "default_guard: nemotron\n"
        f"guards:\n  nemotron: {{type: sglang, base_url: '{guard_url}'}}\n"
        f"upstreams:\n  double: {{type: openai, base_url: '{upstream_url}', api_key: sk-up}}\n"
        "routes:\n"
        "  - name: default\n"
        "    upstream: double\n"
        f"    policy: {ROOT / 'policies' / 'default.yaml'}\n"
        "    forward_headers: ['x-double-*']\n"
        # Three processes, one directory: no shared SQLite file.
        "audit: {enabled: false}\n"
        # Hundreds of requests: no request log lines in the test output.
        "logging: {requests: false}\n"
    )
    return config


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path  # its stdout and stderr: uvicorn's lines and the gateway's JSON logs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert replica.proc.poll() is None, "guardline serve exited"
        try:
            if httpx.get(replica.url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "guardline serve did not become ready"
        time.sleep(0.1)


@contextmanager
def running_replicas(config: Path, count: int) -> Iterator[list[Replica]]:
    replicas: list[Replica] = []
    try:
        for n in range(count):
            port = free_port()
            log = config.parent / f"replica-{n + 1}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*SERVE, "--config", str(config), "--port", str(port)],
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            replicas.append(Replica(proc, port, log))
        for replica in replicas:
            _wait_ready(replica)
        yield replicas
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.terminate()
        for replica in replicas:
            try:
                replica.proc.wait(60)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait()
