"""End to end through the real moderated gateway (`create_app(moderation=True)` under uvicorn),
the official openai client, the OpenAI upstream double and the SGLang/Nemotron guard double:
spans (in-memory exporter), trace context to the upstream and the guard, /metrics, Server-Timing
against the overhead metric, the request log line, the audit trail and THINK re-checks.
"""

from __future__ import annotations

import io
import json
import logging
import re
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


def _wait_for(predicate: Any, what: str) -> None:
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

    def server_span(self) -> ReadableSpan:
        """The request's SERVER span, once it has ended: it ends after the last byte was sent,
        so the client may be done before the gateway has finished its bookkeeping."""
        _wait_for(lambda: self._server_spans(), "the SERVER span")
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


def _value(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for sample_labels, value in metrics.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def start(
    tmp_path: Path,
    upstream: tuple[UpstreamDouble, str],
    guard_server: tuple[str, SGLangDouble],
) -> Iterator[Any]:
    guard = guard_server[1]
    guard.configure(unsafe_words=UNSAFE_WORDS, status=None, delay_ms=0, garbage=None, fail_first=[])
    guard.clear()
    upstream[0].received.clear()
    with ExitStack() as stack:

        def run(**policy: Any) -> Observed:
            (tmp_path / "main.yaml").write_text(
                yaml.safe_dump({"name": "main", "description": "wiring test", **policy})
            )
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
                    }
                )
            )
            config = load_config(config_path, env={})
            exporter = InMemorySpanExporter()
            logs = io.StringIO()
            obs = build_observability(
                config, env={}, log_stream=logs, span_processor=SimpleSpanProcessor(exporter)
            )
            app = create_app(config, moderation=True, observability=obs)
            url = stack.enter_context(run_server(app))
            return Observed(url, obs, exporter, logs, Path(config.audit.path), upstream[0], guard)

        yield run
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _traceparent_parent(header: str) -> tuple[str, str]:
    _version, trace_id, span_id, _flags = header.split("-")
    return trace_id, span_id


def _overhead_ms(server_timing: str) -> float:
    match = re.search(r"overhead;dur=([0-9.]+)", server_timing)
    assert match, server_timing
    return float(match.group(1))


def test_one_request_spans_propagation_metrics_log_audit(start: Any) -> None:
    gw: Observed = start()
    raw = gw.client().chat.completions.with_raw_response.create(
        model="m-1",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"traceparent": TRACEPARENT},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == f"double says: {PROMPT}"
    server_timing = raw.headers["server-timing"]

    # Spans: one SERVER span continuing the client's trace, with its three children.
    server = gw.server_span()
    spans = gw.spans.get_finished_spans()
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    (guard_in,) = _by_name(spans, "guard.input")
    (upstream,) = _by_name(spans, "upstream")
    (guard_out,) = _by_name(spans, "guard.output")
    for child in (guard_in, upstream, guard_out):
        assert child.parent is not None and child.parent.span_id == server.context.span_id
    # Serial input check: it ended before the upstream call started.
    assert guard_in.end_time is not None and upstream.start_time is not None
    assert guard_in.end_time <= upstream.start_time
    assert upstream.kind == SpanKind.CLIENT

    attrs = dict(server.attributes or {})
    policy_ref = raw.headers["x-guardline-policy"]
    assert attrs["guardline.policy"] == policy_ref
    assert attrs["guardline.policy_hash"] == policy_ref.split("@")[1]
    assert attrs["guardline.tenant"] == "acme" and attrs["guardline.route"] == "main"
    assert attrs["guardline.verdict"] == "safe"
    g = dict(guard_in.attributes or {})
    assert g["guardline.verdict"] == "safe" and g["guardline.policy"] == policy_ref
    assert g["guardline.guard"] == "nemotron" and g["guardline.cache_hit"] is False
    assert g["guardline.degraded"] is False and list(g["guardline.categories"]) == []
    assert g["guardline.guard.model"]
    u = dict(upstream.attributes or {})
    assert u["gen_ai.operation.name"] == "chat" and u["gen_ai.request.model"] == "m-1"
    assert u["gen_ai.response.model"] == "m-1"
    assert u["gen_ai.usage.input_tokens"] == 7 and u["gen_ai.usage.output_tokens"] == 5
    # No prompt or response text anywhere in the spans (tracing.record_content is off).
    for span in spans:
        for value in (span.attributes or {}).values():
            assert "tides" not in str(value)

    # The gateway's own spans, not the client's, are what went out.
    up_trace, up_parent = _traceparent_parent(gw.upstream.received[-1].headers["traceparent"])
    assert up_trace == CLIENT_TRACE and up_parent == format(upstream.context.span_id, "016x")
    guard_parents = [_traceparent_parent(h["traceparent"]) for h in gw.guard.headers]
    assert guard_parents == [
        (CLIENT_TRACE, format(guard_in.context.span_id, "016x")),
        (CLIENT_TRACE, format(guard_out.context.span_id, "016x")),
    ]

    # /metrics: the counters moved; the overhead histogram holds the Server-Timing value.
    m = gw.metrics()
    assert _value(m, "guardline_requests_total", route="main", status="200") == 1
    assert _value(m, "guardline_verdicts_total", policy="main", stage="input", verdict="safe") == 1
    assert _value(m, "guardline_verdicts_total", stage="output", verdict="safe") == 1
    assert _value(m, "guardline_guard_seconds_count", guard="nemotron", stage="input") == 1
    assert _value(m, "guardline_cache_misses_total", guard="nemotron") == 2
    assert _value(m, "guardline_breaker_state", guard="nemotron") == 0
    assert _value(m, "guardline_overhead_seconds_count") == 1
    metric_ms = _value(m, "guardline_overhead_seconds_sum") * 1000.0
    assert abs(metric_ms - _overhead_ms(server_timing)) <= 0.006  # header rounds to 0.01 ms

    # One request line with the trace ids, tenant, route, policy, verdicts and timings.
    (line,) = gw.request_lines()
    assert line["trace_id"] == CLIENT_TRACE
    assert line["span_id"] == format(server.context.span_id, "016x")
    assert line["tenant"] == "acme" and line["route"] == "main" and line["status"] == 200
    assert line["policy"] == policy_ref
    assert line["input_verdict"] == "safe" and line["output_verdict"] == "safe"
    assert line["timings_ms"]["overhead"] == pytest.approx(_overhead_ms(server_timing), abs=0.006)
    assert {"guard-input", "upstream", "guard-output", "total"} <= set(line["timings_ms"])

    # Audit: one record per decision, joined to the trace; no content by default.
    rows = gw.audit_rows()
    assert [(r["stage"], r["verdict"]) for r in rows] == [("input", "safe"), ("output", "safe")]
    for row in rows:
        assert row["trace_id"] == CLIENT_TRACE and row["tenant"] == "acme"
        assert row["route"] == "main" and row["policy"] == policy_ref
        assert row["request_id"] == raw.headers["x-guardline-request-id"]
        assert row["content"] is None and len(row["content_hash"]) == 64
    assert _value(gw.metrics(), "guardline_audit_written_total") == 2

    # The key never reaches a log line.
    assert TENANT_KEY not in gw.logs.getvalue()


def test_blocked_input_is_audited_with_a_think_recheck(start: Any) -> None:
    gw: Observed = start(audit={"think": "flagged", "content": True})
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "how to build a bomb"}]
        )
    assert caught.value.status_code == 400

    def rechecked() -> bool:
        rows = gw.audit_rows()
        return bool(rows) and rows[0]["think"] is not None

    _wait_for(rechecked, "the THINK re-check")
    (row,) = gw.audit_rows()
    assert row["stage"] == "input" and row["verdict"] == "unsafe"
    assert json.loads(row["categories"]) == ["Guns and Illegal Weapons"]
    assert row["content"] == "how to build a bomb"
    assert "<think>" not in row["think"] and row["think_verdict"] == "unsafe"
    assert row["disagreement"] == 0
    # The re-check asked the guard in THINK mode, within the request's trace.
    think_calls = [
        (b, h)
        for b, h in zip(gw.guard.requests, gw.guard.headers, strict=True)
        if (b.get("chat_template_kwargs") or {}).get("enable_thinking")
    ]
    assert len(think_calls) == 1
    server = gw.server_span()
    trace_id, _ = _traceparent_parent(think_calls[0][1]["traceparent"])
    assert trace_id == format(server.context.trace_id, "032x")

    m = gw.metrics()
    assert _value(m, "guardline_requests_total", route="main", status="400") == 1
    assert _value(m, "guardline_verdicts_total", stage="input", verdict="unsafe") == 1
    assert _value(m, "guardline_think_checks_total", policy="main", result="agree") == 1
    assert dict(server.attributes or {})["guardline.verdict"] == "unsafe"
    (line,) = gw.request_lines()
    assert line["status"] == 400 and line["input_verdict"] == "unsafe"
    assert line["categories"] == ["Guns and Illegal Weapons"]


def test_blocked_stream_windows_usage_and_final_decision(start: Any) -> None:
    gw: Observed = start(output={"stream": "holdback", "holdback_chars": 50})
    stream = gw.client().chat.completions.create(
        model="m-s",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-double-chunks": "30", "traceparent": TRACEPARENT},
    )
    reasons = [c.finish_reason for chunk in stream for c in chunk.choices]
    assert reasons[-1] == "content_filter"

    server = gw.server_span()
    spans = gw.spans.get_finished_spans()
    windows = _by_name(spans, "guard.output.window")
    assert len(windows) >= 2
    assert [dict(w.attributes or {})["guardline.holdback.index"] for w in windows] == list(
        range(len(windows))
    )
    assert dict(windows[-1].attributes or {})["guardline.verdict"] == "unsafe"
    assert not _by_name(spans, "guard.output")
    (upstream,) = _by_name(spans, "upstream")
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    assert dict(upstream.attributes or {})["gen_ai.response.model"] == "m-s"
    assert dict(server.attributes or {})["guardline.verdict"] == "unsafe"

    rows = gw.audit_rows()
    assert [(r["stage"], r["verdict"]) for r in rows] == [("input", "safe"), ("output", "unsafe")]
    assert json.loads(rows[1]["categories"]) == ["Threat"]
    m = gw.metrics()
    assert _value(m, "guardline_holdback_checks_count") == 1
    assert _value(m, "guardline_holdback_checks_sum") == len(windows)
    assert _value(m, "guardline_verdicts_total", stage="output", verdict="unsafe") == 1
    assert _value(m, "guardline_guard_seconds_count", stage="output") == len(windows)
    (line,) = gw.request_lines()
    assert line["stream"] is True and line["output_verdict"] == "unsafe"
    assert line["holdback_checks"] == len(windows)
