"""End to end through the real moderated gateway (`create_app(moderation=True)` under uvicorn),
the official openai client, the OpenAI upstream double and the SGLang/Nemotron guard double:
spans (in-memory exporter), trace context to the upstream and the guard, /metrics, Server-Timing
against the overhead metric, the request log line, the audit trail and THINK re-checks.
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.observability.wiring_gateway import (
    CLIENT_SPAN,
    CLIENT_TRACE,
    PROMPT,
    TENANT_KEY,
    TRACEPARENT,
    Observed,
    wait_for,
)
from tests.observability.wiring_gateway import metric_value as _value


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _traceparent_parent(header: str) -> tuple[str, str]:
    _version, trace_id, span_id, _flags = header.split("-")
    return trace_id, span_id


def _overhead_ms(server_timing: str) -> float:
    match = re.search(r"overhead;dur=([0-9.]+)", server_timing)
    assert match, server_timing
    return float(match.group(1))


@pytest.mark.parametrize("late_spans", [False, True], ids=["sdk-spans", "late-spans"])
def test_one_request_spans_propagation_metrics_log_audit(start: Any, late_spans: bool) -> None:
    """The same trace whether spans are the SDK's own (default) or recorded after the
    response (`tracing.late_spans`, opt-in)."""
    gw: Observed = start(config={"tracing": {"late_spans": late_spans}})
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
    assert g["guardline.degraded"] is False and not g["guardline.categories"]
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

    # One line per request: the guard calls (httpx) add none.
    assert '"logger": "httpx"' not in gw.logs.getvalue()
    assert '"logger":"httpx"' not in gw.logs.getvalue()
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

    wait_for(rechecked, "the THINK re-check")
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
