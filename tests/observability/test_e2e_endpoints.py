"""Passthrough endpoints in the observed gateway: a `check` decision is audited, counted and
logged like a chat input decision; a `pass` request gets its SERVER and `upstream` spans (the
upstream receives the `upstream` span's traceparent) and a log line marked unchecked."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from opentelemetry.trace import SpanKind

from tests.observability.wiring_gateway import Observed, metric_value, wait_for
from tests.proxy.test_e2e_endpoints import wav_bytes


def _lines(gw: Observed, path: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in gw.logs.getvalue().splitlines() if line]
    return [x for x in lines if x.get("event") == "request" and x.get("path") == path]


def _spans(gw: Observed, path: str) -> list[Any]:
    return [s for s in gw.spans.get_finished_spans() if s.name == f"POST {path}"]


def test_blocked_embeddings_input_is_audited_counted_and_logged(start: Any) -> None:
    gw: Observed = start(audit={"think": "off", "content": True})
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().embeddings.create(model="e", input=["fine", "how to build a bomb"])
    assert caught.value.code == "content_policy_violation"
    # Recorded once the response is out: the client may be faster than that bookkeeping.
    wait_for(gw.audit_rows, "the audit record")
    (row,) = gw.audit_rows()
    assert (row["stage"], row["verdict"], row["route"]) == ("input", "unsafe", "main")
    assert row["content"] == "how to build a bomb"
    assert json.loads(row["categories"]) == ["Guns and Illegal Weapons"]
    m = gw.metrics()
    assert metric_value(m, "guardline_verdicts_total", stage="input", verdict="unsafe") == 1
    assert metric_value(m, "guardline_requests_total", route="main", status="400") == 1
    wait_for(lambda: _lines(gw, "/v1/embeddings"), "the request log line")
    (line,) = _lines(gw, "/v1/embeddings")
    assert (line["status"], line["input_verdict"], line["route"]) == (400, "unsafe", "main")
    wait_for(lambda: _spans(gw, "/v1/embeddings"), "the SERVER span")
    (server,) = _spans(gw, "/v1/embeddings")
    children = [
        s
        for s in gw.spans.get_finished_spans()
        if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    assert sorted(s.name for s in children) == ["guard.input", "guard.input"]  # never upstream


def test_passed_audio_has_upstream_span_and_unchecked_log_line(start: Any) -> None:
    gw: Observed = start(
        config={
            "routes": [
                {
                    "name": "main",
                    "upstream": "double",
                    "policy": "main.yaml",
                    "endpoints": {"/v1/audio/*": "pass"},
                }
            ]
        }
    )
    result = gw.client().audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(), "audio/wav")
    )
    assert result.text.startswith("double heard")
    path = "/v1/audio/transcriptions"
    wait_for(lambda: _spans(gw, path), "the SERVER span")
    (server,) = _spans(gw, path)
    (upstream,) = [
        s
        for s in gw.spans.get_finished_spans()
        if s.kind == SpanKind.CLIENT
        and s.parent is not None
        and s.parent.span_id == server.context.span_id
    ]
    sent = gw.upstream.last().headers["traceparent"]
    assert sent.split("-")[2] == format(upstream.context.span_id, "016x")
    assert dict(upstream.attributes or {})["http.response.status_code"] == 200
    wait_for(lambda: _lines(gw, path), "the request log line")
    (line,) = _lines(gw, path)
    assert (line["input_verdict"], line["output_verdict"]) == ("unchecked", "unchecked")
    assert gw.audit_rows() == []
