"""End to end through the real moderated gateway: parallel input checks in the trace, the
config switches (record_content, tracing/metrics/audit off), degraded decisions, shadow and
policy-reload metrics, OTLP/HTTP export to a real receiver, and no secret in any output.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.trace import SpanKind, StatusCode

from tests.doubles.upstream import UpstreamDouble
from tests.observability.test_otlp_export import Receiver, _spans
from tests.observability.wiring_gateway import (
    CLIENT_TRACE,
    PROMPT,
    TENANT_KEY,
    TRACEPARENT,
    Observed,
    wait_for,
    write_policy,
)
from tests.observability.wiring_gateway import metric_value as _value

UPSTREAM_KEY = "sk-upstream-wiring-secret-77d1e0"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


def _names(gw: Observed) -> dict[str, Any]:
    return {s.name: s for s in gw.spans.get_finished_spans()}


def test_parallel_input_check_overlaps_the_upstream_call(start: Any) -> None:
    gw: Observed = start(input={"parallel": True})
    gw.guard.configure(delay_ms=60)
    raw = gw.client().chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, extra_headers={"x-double-delay-ms": "60"}
    )
    assert raw.parse().choices[0].message.content
    gw.server_span()
    spans = _names(gw)
    guard_in, upstream = spans["guard.input"], spans["upstream"]
    # The upstream call started while the input check was still running.
    assert upstream.start_time < guard_in.end_time
    assert guard_in.start_time < upstream.end_time


def test_record_content_puts_the_texts_in_the_guard_spans(start: Any) -> None:
    gw: Observed = start(config={"tracing": {"record_content": True}})
    gw.client().chat.completions.create(model="m", messages=MESSAGES)
    gw.server_span()
    spans = _names(gw)
    assert spans["guard.input"].attributes["guardline.content.prompt"] == PROMPT
    response = spans["guard.output"].attributes["guardline.content.response"]
    assert response == f"double says: {PROMPT}"


def test_switched_off_parts_stay_off(start: Any) -> None:
    gw: Observed = start(
        config={
            "tracing": {"enabled": False},
            "metrics": {"enabled": False},
            "audit": {"enabled": False, "path": "audit.sqlite3"},
        }
    )
    raw = gw.client().chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, extra_headers={"traceparent": TRACEPARENT}
    )
    assert "overhead;dur=" in raw.headers["server-timing"]
    assert httpx.get(f"{gw.url}/metrics").status_code == 404
    assert gw.obs.writer is None and not gw.audit_path.exists()
    wait_for(lambda: gw.request_lines(), "the request log line")
    assert gw.spans.get_finished_spans() == ()
    # Without tracing the gateway is transparent: the client's own traceparent goes upstream.
    assert gw.upstream.received[-1].headers["traceparent"] == TRACEPARENT
    (line,) = gw.request_lines()
    assert line["input_verdict"] == "safe" and "trace_id" not in line


def test_guard_down_under_open_is_audited_as_skipped_and_degraded(start: Any) -> None:
    gw: Observed = start(on_guard_error="open", output={"enabled": False})
    gw.guard.configure(status=500)
    raw = gw.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.headers["x-guardline-input"] == "degraded"
    gw.server_span()
    (row,) = gw.audit_rows()
    assert row["stage"] == "input" and row["verdict"] == "skipped" and row["degraded"] == 1
    assert row["guard"] == "nemotron"
    m = gw.metrics()
    assert _value(m, "guardline_degraded_total", policy="main", stage="input") == 1
    assert _value(m, "guardline_verdicts_total", stage="input", verdict="degraded") == 1
    span = _names(gw)["guard.input"]
    assert span.attributes["guardline.verdict"] == "degraded"
    assert span.attributes["guardline.degraded"] is True


def test_shadow_and_policy_reload_metrics(start: Any, tmp_path: Path) -> None:
    write_policy(tmp_path, "candidate")
    gw: Observed = start(shadow="candidate.yaml")
    gw.client().chat.completions.create(model="m", messages=MESSAGES)

    def compared() -> float:
        labels = {"policy": "main", "shadow": "candidate", "result": "agree"}
        return _value(gw.metrics(), "guardline_shadow_checks_total", **labels)

    wait_for(lambda: compared() == 2, "the shadow comparisons (input and output)")

    write_policy(tmp_path, "main", shadow="candidate.yaml", mode="binary")
    wait_for(
        lambda: _value(gw.metrics(), "guardline_policy_reload_total", result="ok") >= 1,
        "the reload",
    )
    (tmp_path / "main.yaml").write_text("name: main\nnot_a_key: 1\n")
    wait_for(
        lambda: _value(gw.metrics(), "guardline_policy_reload_total", result="error") >= 1,
        "the rejected edit",
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_otlp_http_export_and_no_secret_anywhere(
    receiver: Receiver,  # first: it must outlive the gateway, whose shutdown flushes spans
    start: Any,
    upstream: tuple[UpstreamDouble, str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    gw: Observed = start(
        config={
            "upstreams": {
                "double": {
                    "type": "openai",
                    "base_url": upstream[1],
                    "api_key": UPSTREAM_KEY,
                }
            }
        },
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"},
        audit={"content": True},
    )
    client = gw.client()
    client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"traceparent": TRACEPARENT}
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key="sk-wrong-key-0123456789", max_retries=0
        ).chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a bomb"}])
    # The upstream got its configured key, never the tenant's.
    assert gw.upstream.received[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"

    wait_for(lambda: {"guard.input", "upstream"} <= set(_spans(receiver)), "the OTLP export")
    exported = _spans(receiver)
    assert exported["upstream"]["_trace_id"] == CLIENT_TRACE
    assert exported["guard.output"]["guardline.verdict"] == "safe"

    assert gw.obs.writer is not None and gw.obs.writer.flush(10)
    with sqlite3.connect(gw.audit_path) as db:
        audit = json.dumps(db.execute("SELECT * FROM audit").fetchall())
    spans = json.dumps(
        [dict(s.attributes or {}) for s in gw.spans.get_finished_spans()], default=str
    )
    captured = capfd.readouterr()
    everything = "\n".join(
        [gw.logs.getvalue(), captured.out, captured.err, spans, audit, str(exported)]
    )
    for secret in (TENANT_KEY, UPSTREAM_KEY, "sk-wrong-key-0123456789"):
        assert secret not in everything
    assert [s for s in gw.spans.get_finished_spans() if s.kind == SpanKind.SERVER]


def test_parallel_block_cancels_the_upstream_span_without_an_error(start: Any) -> None:
    gw: Observed = start(input={"parallel": True})
    with pytest.raises(openai.BadRequestError):
        gw.client().chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "a bomb"}],
            extra_headers={"x-double-delay-ms": "300"},
        )
    gw.server_span()
    upstream = _names(gw)["upstream"]
    assert upstream.attributes["guardline.cancelled"] is True
    assert upstream.status.status_code != StatusCode.ERROR


def test_monitor_stream_is_audited_once_its_checks_settle(start: Any) -> None:
    gw: Observed = start(output={"stream": "monitor", "holdback_chars": 50})
    stream = gw.client().chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers={"x-double-chunks": "30"}
    )
    text = "".join(c.delta.content or "" for chunk in stream for c in chunk.choices)
    assert "word12" in text  # monitor mode lets everything through
    wait_for(lambda: len(gw.audit_rows()) == 2, "the settled stream's audit record")
    rows = gw.audit_rows()
    assert [(r["stage"], r["verdict"]) for r in rows] == [("input", "safe"), ("output", "unsafe")]
    assert _value(gw.metrics(), "guardline_holdback_checks_count") == 1
