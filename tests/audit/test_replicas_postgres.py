"""One PostgreSQL audit trail for many replicas: three `guardline serve` processes write their
decisions to one database under concurrent traffic, one row per decision; the CLI reads the
trail by URL; a database that is down never costs a request."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from proxy.audit.migrations import LATEST_VERSION
from tests.doubles.sglang_server import start_sglang_double
from tests.postgres_server import PostgresServer, postgres_server, postgres_url
from tests.proxy.conftest import double_server, double_url
from tests.proxy.test_e2e_serve import ROOT, SERVE, free_port

__all__ = ["double_server", "double_url", "postgres_server", "postgres_url"]  # fixtures

REPLICAS = 3
REQUESTS = 90
CLI = [*SERVE[:-1], "audit"]
GENEROUS = 120.0  # seconds; only bounds a hang, never measures speed


@pytest.fixture
def guard_url() -> Iterator[str]:
    with start_sglang_double(unsafe_words={"bomb": "Violence"}) as (url, _):
        yield url


def _config(tmp_path: Path, double_url: str, guard_url: str, audit_url: str) -> Path:
    # The input is judged by the guard double; the answer is not (one decision per request).
    (tmp_path / "input.yaml").write_text(
        "name: input-only\ndescription: input checks\noutput: {enabled: false}\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "default_guard: nemotron\n"
        f"guards:\n  nemotron: {{type: sglang, base_url: '{guard_url}'}}\n"
        f"upstreams:\n  double: {{type: openai, base_url: '{double_url}', api_key: sk-up}}\n"
        "routes:\n  - {name: default, upstream: double, policy: input.yaml}\n"
        f"audit: {{url: '{audit_url}'}}\n"
    )
    return config


def _start(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--config", str(config), "--port", str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + GENEROUS
    while True:
        assert proc.poll() is None, "guardline serve exited"
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "guardline serve did not start"
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM: each replica drains its audit queue before it exits."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(GENEROUS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _chat(base: str, text: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=GENEROUS)


def _rows(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT request_id, verdict FROM audit").fetchall()  # type: ignore[return-value]


def _wait_for_rows(url: str, count: int) -> None:
    deadline = time.monotonic() + GENEROUS
    while True:
        try:
            if len(_rows(url)) >= count:
                return
        except psycopg.errors.UndefinedTable:
            pass  # the gateway has not reached the database yet: no schema so far
        assert time.monotonic() < deadline, "audit rows did not arrive"
        time.sleep(0.1)


def test_three_replicas_write_one_row_per_decision(
    tmp_path: Path, double_url: str, guard_url: str, postgres_url: str
) -> None:
    config = _config(tmp_path, double_url, guard_url, postgres_url)
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for _ in range(REPLICAS):
            proc, base = _start(config)
            procs.append(proc)
            bases.append(base)

        def one(i: int) -> tuple[str, str, int]:
            # Every text differs (no verdict-cache hit); one in five is unsafe.
            text = f"question {i}" + (" about a bomb" if i % 5 == 0 else "")
            response = _chat(bases[i % REPLICAS], text)
            return response.headers["x-guardline-request-id"], text, response.status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            sent = list(pool.map(one, range(REQUESTS)))
        assert sorted({status for _, _, status in sent}) == [200, 400]
    finally:
        _stop(procs)

    rows = _rows(postgres_url)
    # Exactly one row per decision: no loss, no duplicate, across three writers.
    assert sorted(request_id for request_id, _ in rows) == sorted(rid for rid, _, _ in sent)
    expected = {rid: ("unsafe" if status == 400 else "safe") for rid, _, status in sent}
    assert dict(rows) == expected
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version FROM audit_schema_version").fetchall()
    assert versions == [(LATEST_VERSION,)]  # three starters, one migration

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*CLI, *args, "--db", postgres_url],
            capture_output=True, text=True, timeout=GENEROUS, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = cli("list", "--verdict", "unsafe", "--limit", "1000").splitlines()[1:]
    assert len(listed) == REQUESTS // 5
    exported = cli("export").splitlines()
    assert len(exported) == REQUESTS
    one_id = listed[0].split()[0]
    assert f'"id": "{one_id}"' in cli("show", one_id[:16])


def test_requests_are_served_while_the_database_is_down(
    tmp_path: Path,
    double_url: str,
    guard_url: str,
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    config = _config(tmp_path, double_url, guard_url, postgres_url)
    postgres_server.stop()  # down before the gateway starts
    proc, base = _start(config)
    try:
        assert _chat(base, "asked while the database is down").status_code == 200
        assert _chat(base, "a bomb while it is down").status_code == 400
        postgres_server.start()
        _wait_for_rows(postgres_url, 2)  # the writer retried and got through
        postgres_server.stop()  # down mid-run
        assert _chat(base, "asked during the second outage").status_code == 200
        postgres_server.start()
        _wait_for_rows(postgres_url, 3)
        postgres_server.stop()  # down at shutdown: the gateway still exits, it does not hang
        assert _chat(base, "asked just before shutdown").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GENEROUS) in (0, -signal.SIGTERM)
    finally:
        _stop([proc])
    postgres_server.start()
    assert len(_rows(postgres_url)) == 3  # the last record could not be written: dropped
