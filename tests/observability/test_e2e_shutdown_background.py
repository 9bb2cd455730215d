"""End to end: work that outlives its request ends before what it uses is closed.

A real gateway (uvicorn, the moderation pipeline, the audit writer on SQLite) between a client,
the OpenAI upstream double and the SGLang guard double. The guard double answers slowly, so a
monitor-mode stream's final check, a shadow check or a THINK re-check is still running when the
client has its answer and the server is told to shut down. The engine is the real one, noting
(a test double's only addition) how much background work was left when the lifespan closed it.

Drained: the work finishes within `server.graceful_shutdown_s` and its audit record is written.
Cancelled: the guard answers after the deadline; the work is cancelled before the engine closes
and the cancellation is recorded (log line, degraded audit record, metrics).

Nothing measures time: the deadlines are generous, or far from the guard's delay.
"""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from guard_engine.engine import GuardEngine
from proxy.app import create_app
from proxy.config import load_config
from proxy.config_schema import GatewayConfig
from proxy.guards import build_backends
from proxy.observability.setup import Observability, build_observability
from proxy.state import GatewayState
from tests.conftest_servers import serve
from tests.doubles.sglang_server import SGLangDouble
from tests.doubles.upstream import UpstreamDouble
from tests.observability.wiring_gateway import UNSAFE_WORDS, write_policy

# What the asyncio event loop logs when a task is lost, or its failure never seen.
LOST_TASK_MESSAGES = ("Task was destroyed but it is pending", "exception was never retrieved")
GENEROUS = httpx.Timeout(60.0)


class RecordingEngine(GuardEngine):
    """The real engine over the configured backends; `aclose` first notes what background
    work the gateway still had running, and whether the audit writer was still open."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(build_backends(config), default_guard=config.default_guard)
        self.app: Starlette | None = None
        self.obs: Observability | None = None
        self.background_at_close: int | None = None
        self.writer_open_at_close: bool | None = None

    async def aclose(self) -> None:
        assert self.app is not None and self.obs is not None and self.obs.writer is not None
        state: GatewayState = self.app.state.gateway
        self.background_at_close = state.background.pending
        self.writer_open_at_close = not self.obs.writer._closed
        await super().aclose()


@dataclass
class Running:
    url: str
    server: uvicorn.Server
    app: Starlette
    engine: RecordingEngine
    obs: Observability
    logs: io.StringIO
    audit_path: Path
    stack: ExitStack

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    def shut_down(self) -> None:
        """As SIGTERM: uvicorn's graceful shutdown, then the app's lifespan shutdown; returns
        when the server thread has ended."""
        self.stack.close()

    def audit_rows(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.audit_path) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY stage")]

    def metric(self, name: str, **labels: str) -> float:
        assert self.obs.metrics is not None
        body, _ = self.obs.metrics.render()
        return sum(
            sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def lost_tasks(self) -> list[str]:
        text = self.logs.getvalue()
        return [m for m in LOST_TASK_MESSAGES if m in text]


Start = Callable[..., Running]


@pytest.fixture
def start(
    tmp_path: Path,
    upstream: tuple[UpstreamDouble, str],
    guard_server: tuple[str, SGLangDouble],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Start]:
    guard = guard_server[1]
    stacks: list[ExitStack] = []

    def run(*, graceful_s: float, guard_delay_ms: int, **policy: Any) -> Running:
        guard.configure(
            unsafe_words=UNSAFE_WORDS, status=None, delay_ms=0, garbage=None, fail_first=[]
        )
        guard.clear()
        write_policy(tmp_path, "main", **policy)
        config_path = tmp_path / "config.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "server": {"graceful_shutdown_s": graceful_s},
                    "default_guard": "nemotron",
                    "guards": {
                        "nemotron": {
                            "type": "sglang",
                            "base_url": guard_server[0],
                            # Longer than any delay here: a check ends by its answer or by
                            # the shutdown, never by its own timeout.
                            "timeout_ms": 120_000,
                        }
                    },
                    "upstreams": {"double": {"type": "openai", "base_url": upstream[1]}},
                    "routes": [{"name": "main", "upstream": "double", "policy": "main.yaml"}],
                    "audit": {"path": str(tmp_path / "audit.sqlite3")},
                }
            )
        )
        config = load_config(config_path, env={})
        logs = io.StringIO()
        obs = build_observability(config, log_stream=logs)
        engine = RecordingEngine(config)
        app = create_app(config, moderation=True, engine=engine, observability=obs)
        engine.app, engine.obs = app, obs
        stack = ExitStack()
        stacks.append(stack)
        url, server = stack.enter_context(serve(app, graceful_shutdown_s=max(1, int(graceful_s))))
        # Slow from here on: the requests' own checks too, which only makes them longer.
        guard.configure(delay_ms=guard_delay_ms)
        return Running(url, server, app, engine, obs, logs, Path(config.audit.path), stack)

    yield run
    for stack in stacks:
        stack.close()
    guard.configure(delay_ms=0)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()
    lost = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not [m for m in lost if any(s in m for s in LOST_TASK_MESSAGES)]


def _stream(url: str, chunks: int) -> str:
    """A monitor-mode stream read to its end; returns the text the client received."""
    body = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "count for me"}],
    }
    text = []
    with (
        httpx.Client(timeout=GENEROUS) as client,
        client.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"x-double-chunks": str(chunks)},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-guardline-output"] == "monitor"
        for line in response.iter_lines():
            if line.startswith("data: {"):
                text.append(line)
    return "\n".join(text)


def test_monitor_stream_check_is_drained_before_the_engine_closes(start: Start) -> None:
    # The answer "word0 ... word19" is unsafe from word12 on: only the guard's final check,
    # still running when the client has the whole stream, can say so. Its record, written
    # during the drain, starts THINK re-checks: the drain waits for those too.
    gw = start(
        graceful_s=30,
        guard_delay_ms=1500,
        output={"stream": "monitor"},
        audit={"think": "all"},
    )
    received = _stream(gw.url, chunks=20)
    assert "word12" in received  # monitor mode never blocks
    assert gw.state.background.pending > 0  # the final check is still running

    gw.shut_down()

    assert gw.engine.background_at_close == 0
    assert gw.engine.writer_open_at_close is True
    assert gw.state.background.cancelled == []
    output = next(r for r in gw.audit_rows() if r["stage"] == "output")
    assert output["verdict"] == "unsafe" and "Threat" in output["categories"]
    assert not output["degraded"]
    assert output["think"] is not None and output["think_verdict"] == "unsafe"
    assert gw.lost_tasks() == []


def test_monitor_stream_check_past_the_deadline_is_cancelled_and_recorded(
    start: Start,
) -> None:
    # The guard answers after a minute: the input is not checked, or it would wait for it.
    gw = start(
        graceful_s=1,
        guard_delay_ms=60_000,
        input={"enabled": False},
        output={"stream": "monitor"},
    )
    received = _stream(gw.url, chunks=5)
    assert "word4" in received
    assert gw.state.background.pending > 0

    gw.shut_down()

    assert gw.engine.background_at_close == 0
    assert gw.engine.writer_open_at_close is True
    (cancelled,) = [n for n in gw.state.background.cancelled if "monitor-settle" in n]
    assert "cancelled at shutdown" in gw.logs.getvalue() and cancelled in gw.logs.getvalue()
    (output,) = [r for r in gw.audit_rows() if r["stage"] == "output"]
    # Not judged, and saying so: skipped, degraded, with the text the guard was asked about.
    assert output["verdict"] == "skipped" and output["degraded"]
    assert (
        gw.metric(
            "guardline_degraded_total",
            policy="main",
            stage="output",
            reason="cancelled_at_shutdown",
        )
        == 1
    )
    assert gw.lost_tasks() == []


def test_shadow_checks_are_drained_before_the_engine_closes(start: Start, tmp_path: Path) -> None:
    write_policy(tmp_path, "candidate")
    gw = start(
        graceful_s=30,
        guard_delay_ms=800,
        shadow="candidate.yaml",
    )
    with httpx.Client(timeout=GENEROUS) as client:
        response = client.post(
            gw.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hello there"}]},
        )
    assert response.status_code == 200
    assert gw.state.background.pending > 0  # the output's shadow check

    gw.shut_down()

    assert gw.engine.background_at_close == 0
    assert gw.engine.writer_open_at_close is True
    assert gw.state.background.cancelled == []
    rows = gw.audit_rows()
    assert [(r["stage"], r["verdict"]) for r in rows] == [("input", "safe"), ("output", "safe")]
    for stage in ("input", "output"):
        assert gw.metric("guardline_shadow_checks_total", stage=stage, result="agree") == 1
    assert gw.lost_tasks() == []
