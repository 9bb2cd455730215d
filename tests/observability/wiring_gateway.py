"""The moderated gateway under test, with its observability captured: a real server
(`create_app(moderation=True)` under uvicorn) between the official openai client, the OpenAI
upstream double and the SGLang/Nemotron guard double; spans go to an in-memory exporter, logs
to a buffer, the audit trail to a SQLite file in the test's folder.

Fixtures (`upstream`, `guard_server`, `start`) are registered by this folder's conftest.py.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.config import load_config
from proxy.observability.setup import Observability, build_observability
from tests.conftest_servers import run_server
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.doubles.upstream import UpstreamDouble

TENANT_KEY = "gl-acme-wiring-key-8c2f6a1d9e"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
UNSAFE_WORDS = {"bomb": "Guns and Illegal Weapons", "word12": "Threat"}
PROMPT = "tell me about the tides of the moon"


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[UpstreamDouble, str]]:
    double = UpstreamDouble()
    with run_server(double) as url:
        yield double, url + "/v1"


@pytest.fixture(scope="module")
def guard_server() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double(unsafe_words=UNSAFE_WORDS) as (url, rec):
        yield url, rec


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Observed:
    url: str
    obs: Observability
    spans: InMemorySpanExporter
    logs: io.StringIO
    audit_path: Path
    upstream: UpstreamDouble
    guard: SGLangDouble
    app: Starlette

    def server_span(self) -> ReadableSpan:
        """The request's SERVER span, once it has ended: it ends after the last byte was sent,
        so the client may be done before the gateway has finished its bookkeeping."""
        wait_for(lambda: self._server_spans(), "the SERVER span")
        (span,) = self._server_spans()
        return span

    def _server_spans(self) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans.get_finished_spans()
            if s.kind == SpanKind.SERVER and s.name.endswith("/chat/completions")
        ]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=TENANT_KEY, max_retries=0)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        text = httpx.get(f"{self.url}/metrics").text
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((sample.labels, sample.value))
        return out

    def audit_rows(self) -> list[dict[str, Any]]:
        assert self.obs.writer is not None
        assert self.obs.writer.flush(10)
        with sqlite3.connect(self.audit_path) as db:
            db.row_factory = sqlite3.Row
            # Both decisions of a request are recorded at its end: order by stage, not by id.
            return [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY request_id, stage")]

    def request_lines(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines() if line]
        return [
            line
            for line in lines
            if line.get("event") == "request" and line.get("path") == "/v1/chat/completions"
        ]


def metric_value(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for sample_labels, value in metrics.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def write_policy(folder: Path, name: str, **fields: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "description": "wiring test", **fields}))
    return path


@pytest.fixture
def start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    upstream: tuple[UpstreamDouble, str],
    guard_server: tuple[str, SGLangDouble],
) -> Iterator[Any]:
    guard = guard_server[1]
    guard.configure(unsafe_words=UNSAFE_WORDS, status=None, delay_ms=0, garbage=None, fail_first=[])
    guard.clear()
    upstream[0].received.clear()
    with ExitStack() as stack:

        def run(
            *,
            config: dict[str, Any] | None = None,
            env: dict[str, str] | None = None,
            without: tuple[type, ...] = (),
            **policy: Any,
        ) -> Observed:
            """Start the gateway: `policy` fields for main.yaml, `config` sections replaced,
            `env` the OTEL_* variables its SDK reads, `without` middleware classes left out
            of the app."""
            for name, value in (env or {}).items():
                monkeypatch.setenv(name, value)
            write_policy(tmp_path, "main", **policy)
            config_path = tmp_path / "config.yaml"
            config_path.write_text(
                yaml.safe_dump(
                    {
                        "auth": {"tenants": {"acme": {"keys": [TENANT_KEY]}}},
                        "default_guard": "nemotron",
                        "guards": {
                            "nemotron": {
                                "type": "sglang",
                                "base_url": guard_server[0],
                                "timeout_ms": 3000,
                            }
                        },
                        "upstreams": {"double": {"type": "openai", "base_url": upstream[1]}},
                        "routes": [{"name": "main", "upstream": "double", "policy": "main.yaml"}],
                        "audit": {"path": "audit.sqlite3"},
                        **(config or {}),
                    }
                )
            )
            loaded = load_config(config_path, env={})
            exporter = InMemorySpanExporter()
            logs = io.StringIO()
            obs = build_observability(
                loaded,
                log_stream=logs,
                span_processor=SimpleSpanProcessor(exporter),
            )
            app = create_app(loaded, moderation=True, observability=obs)
            # Starlette builds its middleware stack at the first request, from this list.
            app.user_middleware = [m for m in app.user_middleware if m.cls not in without]
            url = stack.enter_context(run_server(app))
            return Observed(
                url, obs, exporter, logs, Path(loaded.audit.path), upstream[0], guard, app
            )

        yield run
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()
