"""One verdict cache across replicas: two `guardline serve` processes share one redis-server
(config.yaml `cache.redis_url`) and one SGLang guard double. A verdict computed through
gateway A is served by gateway B without a guard call; with Redis stopped mid-run every
request still succeeds and the misses are counted in /metrics."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.proxy.test_e2e_serve import ROOT, SERVE, free_port
from tests.redis_server import RedisServer

PROMPT = "Which birds nest in pine forests?"


@pytest.fixture
def guard() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double() as pair:
        yield pair


def _config(tmp_path: Path, upstream: str, guard_url: str, redis_url: str) -> Path:
    (tmp_path / "checked.yaml").write_text(
        yaml.safe_dump(
            {"name": "checked", "description": "input and output", "on_guard_error": "closed"}
        )
    )
    config = {
        "default_guard": "nemotron",
        "guards": {"nemotron": {"type": "sglang", "base_url": guard_url}},
        "upstreams": {"double": {"type": "openai", "base_url": upstream, "api_key": "sk-up"}},
        "routes": [{"name": "default", "upstream": "double", "policy": "checked.yaml"}],
        "cache": {"redis_url": redis_url},
        "audit": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--config", str(config), "--port", str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "guardline serve exited"
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "guardline serve did not start"
        time.sleep(0.1)


def _chat(base: str, text: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=30)


def _counter(base: str, name: str, outcome: str, label: str = "outcome") -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(f'{name}{{{label}="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{label}={outcome!r}}} not in /metrics")


def _wait_keys(redis_url: str, n: int) -> None:
    """The verdicts are written in the background, just after the response."""
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while len(list(client.scan_iter(match="guardline:verdicts:*"))) < n:
            assert time.monotonic() < deadline, "verdicts never reached Redis"
            time.sleep(0.01)
    finally:
        client.close()


def _assert_no_text_in_redis(redis_url: str, texts: list[str]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match="*"):
            value = client.get(key) or b""
            for text in texts:
                assert text.encode() not in key and text.encode() not in value, (key, value)
    finally:
        client.close()


def test_a_verdict_from_gateway_a_is_served_by_gateway_b_and_redis_down_is_a_miss(
    tmp_path: Path,
    double_url: str,
    guard: tuple[str, SGLangDouble],
    redis_server: RedisServer,
) -> None:
    guard_url, rec = guard
    config = _config(tmp_path, double_url, guard_url, redis_server.url)
    gateways = [_start(config), _start(config)]
    (_, a), (_, b) = gateways
    try:
        first = _chat(a, PROMPT)
        assert first.status_code == 200, first.text
        assert (first.headers["x-guardline-input"], first.headers["x-guardline-output"]) == (
            "safe",
            "safe",
        )
        assert len(rec.requests) == 2  # input and output check
        _wait_keys(redis_server.url, 2)
        answer = first.json()["choices"][0]["message"]["content"]
        _assert_no_text_in_redis(redis_server.url, [PROMPT, "pine forests", answer])

        second = _chat(b, PROMPT)
        assert second.status_code == 200
        assert second.headers["x-guardline-input"] == "safe"
        assert len(rec.requests) == 2  # B asked the guard nothing
        assert _counter(b, "guardline_shared_cache_lookups_total", "hit") == 2
        # The gateway's own verdict-cache metric counts them as the hits they are.
        assert _counter(b, "guardline_cache_hits_total", "nemotron", "guard") == 2
        assert _counter(a, "guardline_shared_cache_writes_total", "stored") == 2

        redis_server.stop()  # mid-run
        for i, base in enumerate((a, b, a, b)):
            response = _chat(base, f"{PROMPT} ({i})")
            assert response.status_code == 200, response.text
            assert response.headers["x-guardline-input"] == "safe"
        assert len(rec.requests) == 2 + 8  # every check went to the guard
        for base in (a, b):
            assert _counter(base, "guardline_shared_cache_lookups_total", "unavailable") >= 1
        # B's own LRU still serves what it had.
        assert _chat(b, PROMPT).status_code == 200
        assert len(rec.requests) == 10
    finally:
        for proc, _ in gateways:
            proc.terminate()
        for proc, _ in gateways:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
