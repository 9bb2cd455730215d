"""End to end: requests still running at the graceful-shutdown deadline are ended with an
OpenAI error (one SSE error event for a stream, a 503 envelope before the response began),
not a cut connection.

The upstream double keeps the requests running; the deadline is uvicorn's
`timeout_graceful_shutdown` (what `server.graceful_shutdown_s` sets in `guardline serve`).
Nothing here measures time: the client waits without a read timeout of its own, bounded only
by a generous overall one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest
import uvicorn

from proxy.app import create_app
from tests.conftest_servers import serve
from tests.doubles.upstream import UpstreamDouble
from tests.proxy.conftest import make_config

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
GENEROUS = httpx.Timeout(60.0)


@pytest.fixture
def shutting_gateway(double_url: str) -> Iterator[tuple[str, uvicorn.Server]]:
    app = create_app(make_config(double_url), moderation=False)
    with serve(app, graceful_shutdown_s=1) as (url, server):
        yield url, server


def _wait_received(double: UpstreamDouble, request_id: str) -> None:
    """Until the upstream holds the request (bounded, so a regression fails, not hangs)."""
    pause = threading.Event()
    for _ in range(2000):
        if any(r.headers.get("x-double-id") == request_id for r in double.received):
            return
        pause.wait(0.01)
    raise AssertionError("the upstream never received the request")


def test_stream_running_at_the_deadline_ends_with_one_error_event(
    shutting_gateway: tuple[str, uvicorn.Server],
) -> None:
    url, server = shutting_gateway
    headers = {"x-double-chunks": "100000", "x-double-chunk-delay-ms": "20"}
    events: list[bytes] = []
    with (
        httpx.Client(timeout=GENEROUS) as client,
        client.stream(
            "POST", url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert orjson.loads(first[6:])["object"] == "chat.completion.chunk"
        server.should_exit = True  # SIGTERM
        # Reading to the end raises if the connection is cut instead of ended.
        events = [line.encode() for line in lines if line.startswith("data: ")]
    errors = [e for e in events if b'"error"' in e]
    assert len(errors) == 1
    assert events[-1] == errors[0]  # the last event, nothing after it
    error = orjson.loads(errors[0][6:])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    assert b"data: [DONE]" not in events


def test_request_waiting_at_the_deadline_gets_a_503_envelope(
    shutting_gateway: tuple[str, uvicorn.Server], double: UpstreamDouble
) -> None:
    url, server = shutting_gateway
    result: list[httpx.Response] = []

    def call() -> None:
        headers = {"x-double-id": "shutdown-wait", "x-double-delay-ms": "120000"}
        result.append(
            httpx.post(url + "/v1/chat/completions", json=BODY, headers=headers, timeout=GENEROUS)
        )

    caller = threading.Thread(target=call)
    caller.start()
    _wait_received(double, "shutdown-wait")
    server.should_exit = True
    caller.join(timeout=60)
    assert not caller.is_alive()
    (response,) = result
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "server_shutting_down"
