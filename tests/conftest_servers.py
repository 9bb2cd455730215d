"""Run a real ASGI app under uvicorn on 127.0.0.1 (an ephemeral port) in a background thread.

Used by end-to-end tests for both the gateway and the upstream double; the server is the same
uvicorn configuration as `guardline serve` (uvloop, httptools), stopped on context exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp


@contextmanager
def run_server(app: ASGIApp) -> Iterator[str]:
    """Serve `app`; yields its base URL `http://127.0.0.1:<port>`."""
    with serve(app) as (url, _):
        yield url


@contextmanager
def serve(app: ASGIApp, graceful_shutdown_s: int = 2) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve `app`; yields its base URL and the server (`server.should_exit = True` starts the
    graceful shutdown, as SIGTERM does)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        log_config=None,  # like `guardline serve`: the app's logging (redacted) stays in force
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=graceful_shutdown_s,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
