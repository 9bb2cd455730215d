"""Three replicas behind the real nginx running deploy/nginx.conf.

- Drain: under steady load (chat and streamed chat, each request guard-checked by the SGLang
  double, some in flight at any time), one replica gets SIGTERM. Clients see no failure: its
  running requests finish (uvicorn's graceful shutdown), and the connections nginx then makes
  to it are refused and retried on another replica.
- No replay: a replica killed while it holds POSTs that reached the upstream model does not
  get them re-sent to another replica; their clients get nginx's OpenAI-shaped error and the
  upstream saw each request once.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.deploy.nginx_server import Nginx
from tests.deploy.replicas import Replica, running_replicas, write_config
from tests.doubles.sglang_server import start_sglang_double
from tests.doubles.upstream import UpstreamDouble

CLIENTS = 6
REQUESTS = 300
CHAT = {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


@pytest.fixture
def guard_url() -> Iterator[str]:
    with start_sglang_double() as (url, _):
        yield url


@pytest.fixture
def stack(
    tmp_path: Path, double_url: str, guard_url: str
) -> Iterator[tuple[Nginx, list[Replica]]]:
    config = write_config(tmp_path, double_url, guard_url)
    with running_replicas(config, 3) as replicas:
        nginx = Nginx(tmp_path / "nginx", [r.port for r in replicas])
        nginx.start()
        try:
            yield nginx, replicas
        finally:
            nginx.stop()


def _one(client: httpx.Client, i: int) -> tuple[str, float]:
    """One request through nginx; returns what went wrong ("" when nothing) and its end time."""
    stream = i % 3 == 0
    headers = {"x-double-delay-ms": "60"}
    if stream:
        headers |= {"x-double-chunks": "4", "x-double-chunk-delay-ms": "30"}
    body = {**CHAT, "stream": stream}
    try:
        response = client.post("/v1/chat/completions", json=body, headers=headers)
    except httpx.TransportError as exc:
        return f"transport error: {exc!r}", time.monotonic()
    if response.status_code != 200:
        return f"{response.status_code}: {response.text[:300]}", time.monotonic()
    if stream:
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        if events[-1:] != ["data: [DONE]"] or any('"error"' in e for e in events):
            return f"broken stream: {response.text[-300:]}", time.monotonic()
    elif response.json()["choices"][0]["finish_reason"] != "stop":
        return f"unexpected answer: {response.text[:300]}", time.monotonic()
    return "", time.monotonic()


def _stream_on(replica: Replica, double: UpstreamDouble) -> str:
    """A slow stream sent to `replica` itself; what went wrong ("" when nothing)."""
    headers = {
        "x-double-id": "in-flight-at-sigterm",
        "x-double-chunks": "8",
        "x-double-chunk-delay-ms": "100",
    }
    body = {**CHAT, "stream": True}
    response = httpx.post(
        replica.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    )
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    if response.status_code != 200 or events[-1:] != ["data: [DONE]"]:
        return f"{response.status_code}: {response.text[-300:]}"
    return ""


def _wait_received(double: UpstreamDouble, request_id: str) -> None:
    deadline = time.monotonic() + 30
    while request_id not in _seen(double):
        assert time.monotonic() < deadline, f"{request_id} never reached the upstream"
        time.sleep(0.01)


def test_sigterm_to_one_replica_under_load_fails_no_request(
    stack: tuple[Nginx, list[Replica]], double: UpstreamDouble
) -> None:
    nginx, replicas = stack
    stopped = replicas[1]
    counter = iter(range(REQUESTS))
    lock = threading.Lock()
    results: list[tuple[str, float]] = []
    sigterm_at: list[float] = []
    in_flight: list[Future[str]] = []

    def client_loop() -> None:
        with httpx.Client(base_url=nginx.url, timeout=60) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                if i == REQUESTS // 3 and not sigterm_at:
                    # A third of the way in: the other clients have requests in flight, and
                    # one stream surely runs on the replica that is stopped.
                    in_flight.append(pool.submit(_stream_on, stopped, double))
                    _wait_received(double, "in-flight-at-sigterm")
                    sigterm_at.append(time.monotonic())
                    stopped.proc.send_signal(signal.SIGTERM)
                results.append(_one(client, i))

    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        for future in [pool.submit(client_loop) for _ in range(CLIENTS)]:
            future.result()
        # The stream that was running on the replica when it got SIGTERM finished whole.
        assert in_flight[0].result() == ""

    failures = [error for error, _ in results if error]
    assert failures == [], failures[:5]
    assert len(results) == REQUESTS
    # The replica drained and shut down in order (uvicorn then re-raises the SIGTERM it
    # caught, hence the exit status); requests kept succeeding after it stopped.
    assert stopped.proc.wait(60) == -signal.SIGTERM
    assert "Application shutdown complete." in stopped.log.read_text()
    assert sum(1 for _, end in results if end > sigterm_at[0]) > REQUESTS // 2
    lines = nginx.log_lines()
    stopped_addr = f"127.0.0.1:{stopped.port}"
    # It served its share before the signal...
    assert any(f"upstream={stopped_addr} " in line for line in lines)
    # ...and afterwards nginx found it gone and sent those requests on: a retried POST shows
    # two upstreams, the first one the stopped replica, refused (status 502 for that try).
    retried = [line for line in lines if f"upstream={stopped_addr}, " in line]
    assert retried, "no request was retried away from the stopped replica"
    assert all('"POST ' in line and " 200 " in line for line in retried)
    # The other replicas are still serving.
    for replica in replicas:
        if replica is not stopped:
            assert replica.proc.poll() is None


def test_a_post_that_reached_a_replica_is_not_replayed_when_it_dies(
    stack: tuple[Nginx, list[Replica]], double: UpstreamDouble
) -> None:
    nginx, replicas = stack
    # Every nginx worker's round robin starts with the first replica: among concurrent
    # requests, some land on it.
    victim = replicas[0]
    ids = [f"no-replay-{i}" for i in range(6)]

    def slow(request_id: str) -> httpx.Response:
        headers = {"x-double-delay-ms": "3000", "x-double-id": request_id}
        return httpx.post(
            nginx.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=60
        )

    with ThreadPoolExecutor(len(ids)) as pool:
        futures = [pool.submit(slow, request_id) for request_id in ids]
        # Wait until the upstream model has every request: past this point a replica has
        # started answering each one (guard check done, upstream called).
        deadline = time.monotonic() + 30
        while not set(ids) <= _seen(double):
            assert time.monotonic() < deadline, _seen(double)
            time.sleep(0.02)
        victim.proc.send_signal(signal.SIGKILL)
        responses = [future.result() for future in futures]

    statuses = Counter(response.status_code for response in responses)
    assert statuses[503] >= 1, statuses  # the victim had some of them
    assert statuses[200] + statuses[503] == len(ids), statuses
    for response in responses:
        if response.status_code == 503:
            error = response.json()["error"]
            assert error["code"] == "no_replica_available"
            assert response.headers["retry-after"] == "1"
    # Each request reached the upstream exactly once: none was sent again to another replica.
    seen = Counter(
        r.headers["x-double-id"] for r in double.received if r.headers.get("x-double-id") in ids
    )
    assert seen == dict.fromkeys(ids, 1)
    victim_lines = [line for line in nginx.log_lines() if f"127.0.0.1:{victim.port}" in line]
    assert victim_lines and all(re.search(r"upstream=127\.0\.0\.1:\d+ ", line) for line in
                                victim_lines)


def _seen(double: UpstreamDouble) -> set[str]:
    return {r.headers["x-double-id"] for r in double.received if "x-double-id" in r.headers}
