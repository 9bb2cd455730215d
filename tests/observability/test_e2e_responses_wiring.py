"""The Responses API gets the same observability as chat: spans (with the Responses usage
names read as tokens), metrics, the request log line and one audit record per decision."""

from __future__ import annotations

import json
from typing import Any

from tests.observability.wiring_gateway import PROMPT, TRACEPARENT, Observed
from tests.observability.wiring_gateway import metric_value as _value


def test_a_response_is_traced_counted_logged_and_audited(start: Any) -> None:
    gw: Observed = start()
    raw = gw.client().responses.with_raw_response.create(
        model="m-1", input=PROMPT, extra_headers={"traceparent": TRACEPARENT}
    )
    assert raw.parse().output_text == f"double says: {PROMPT}"
    assert gw.upstream.received[-1].path == "/v1/responses"

    spans = gw.spans.get_finished_spans()
    names = [s.name for s in spans]
    assert {"guard.input", "upstream", "guard.output"} <= set(names)
    (upstream,) = [s for s in spans if s.name == "upstream"]
    u = dict(upstream.attributes or {})
    assert u["gen_ai.usage.input_tokens"] == 7 and u["gen_ai.usage.output_tokens"] == 5

    m = gw.metrics()
    assert _value(m, "guardline_requests_total", route="main", status="200") == 1
    assert _value(m, "guardline_verdicts_total", policy="main", stage="input", verdict="safe") == 1
    assert _value(m, "guardline_verdicts_total", stage="output", verdict="safe") == 1

    lines = [json.loads(x) for x in gw.logs.getvalue().splitlines() if x]
    (line,) = [x for x in lines if x.get("event") == "request" and x.get("path") == "/v1/responses"]
    assert line["input_verdict"] == "safe" and line["output_verdict"] == "safe"

    rows = gw.audit_rows()
    assert [(r["stage"], r["verdict"]) for r in rows] == [("input", "safe"), ("output", "safe")]
    assert all(r["request_id"] == raw.headers["x-guardline-request-id"] for r in rows)


def test_a_streamed_response_is_audited_when_it_ends(start: Any) -> None:
    gw: Observed = start()
    with gw.client().responses.stream(model="m-1", input=PROMPT) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.status == "completed"
    rows = gw.audit_rows()
    assert [r["stage"] for r in rows] == ["input", "output"]
