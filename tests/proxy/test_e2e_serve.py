"""`guardline serve` as a real process: config errors, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.doubles.upstream import UpstreamDouble

SERVE = [sys.executable, "-c", "from proxy.cli import main; raise SystemExit(main())", "serve"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_config_error_names_file_line_and_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams:\n  u: {type: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
        "routes:\n  - {name: d, upstream: u, policy: p.yaml, colour: blue}\n"
    )
    done = subprocess.run(
        [*SERVE, "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 2
    assert f"{config}:4" in done.stderr
    assert "routes[0].colour" in done.stderr
    assert "Traceback" not in done.stderr


def start_serve(
    tmp_path: Path, double_url: str, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`guardline serve` with moderation switched off by policy, once /healthz answers."""
    policy = tmp_path / "off.yaml"
    policy.write_text(
        "name: passthrough\ndescription: no checks\ninput: {enabled: false}\n"
        "output: {enabled: false}\non_guard_error: open\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "server: {graceful_shutdown_s: 20}\n"
        f"upstreams:\n  double: {{type: openai, base_url: '{double_url}'}}\n"
        "routes:\n  - {name: default, upstream: double, policy: off.yaml}\n"
        f"audit: {{path: '{tmp_path}/audit.sqlite3'}}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [*SERVE, "--config", str(config), "--port", str(port), *extra], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, "guardline serve exited"
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("guardline serve did not start")
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path, double_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, base = start_serve(tmp_path, double_url)
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_workers_serve_from_the_config_path(tmp_path: Path, double_url: str) -> None:
    proc, base = start_serve(tmp_path, double_url, "--workers", "2")
    try:
        for _ in range(4):
            response = httpx.post(
                base + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"] == "double says: hi"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(
    served: tuple[subprocess.Popen[bytes], str], double: UpstreamDouble
) -> None:
    proc, base = served
    started = threading.Event()
    body: list[bytes] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            base + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"x-double-chunks": "8", "x-double-chunk-delay-ms": "150"},
            timeout=30,
        ) as response:
            for chunk in response.iter_raw():
                body.append(chunk)
                started.set()

    client = threading.Thread(target=stream)
    client.start()
    assert started.wait(30)
    proc.send_signal(signal.SIGTERM)
    # New connections are refused once the listener is closed.
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), 0.5).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)
    client.join(30)
    assert b"".join(body).endswith(b"data: [DONE]\n\n")  # the in-flight stream finished
    # uvicorn re-raises the signal after its graceful shutdown: killed by SIGTERM, cleanly.
    assert proc.wait(30) in (0, -signal.SIGTERM)
