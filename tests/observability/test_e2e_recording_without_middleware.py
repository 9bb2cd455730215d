"""Nothing recorded depends on which observability middlewares are installed: spans, metrics
and audit records of a moderated request are produced by the request path itself (the
request's context runs the deferred work from GatewayMiddleware, which every app has), with
or without the request log and the SERVER-span middleware."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.observability.asgi import ObservabilityMiddleware
from proxy.observability.request_log import RequestLogMiddleware
from tests.observability.wiring_gateway import PROMPT, Observed, wait_for
from tests.observability.wiring_gateway import metric_value as _value


def test_logging_requests_off_leaves_the_request_log_out(start: Any) -> None:
    """`logging.requests: false`, the configuration without the request log middleware."""
    gw: Observed = start(config={"logging": {"requests": False}})
    assert RequestLogMiddleware not in [m.cls for m in gw.app.user_middleware]
    _one_request_is_recorded(gw, without=(RequestLogMiddleware,))


@pytest.mark.parametrize(
    "without",
    [(), (RequestLogMiddleware,), (RequestLogMiddleware, ObservabilityMiddleware)],
    ids=["all", "no-request-log", "no-observability-middlewares"],
)
def test_records_do_not_depend_on_the_middlewares(start: Any, without: tuple[type, ...]) -> None:
    _one_request_is_recorded(start(without=without), without)


def _one_request_is_recorded(gw: Observed, without: tuple[type, ...]) -> None:
    completion = gw.client().chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": PROMPT}]
    )
    assert completion.choices[0].message.content == f"double says: {PROMPT}"

    # Audit: both decisions of the request.
    wait_for(lambda: len(gw.audit_rows()) == 2, "two audit records")
    rows = gw.audit_rows()
    assert [(r["stage"], r["verdict"]) for r in rows] == [("input", "safe"), ("output", "safe")]
    assert len({r["request_id"] for r in rows}) == 1

    # Metrics: one verdict per stage.
    metrics = gw.metrics()
    for stage in ("input", "output"):
        assert _value(metrics, "guardline_verdicts_total", stage=stage, verdict="safe") == 1

    # Spans: the guard checks and the upstream call, whether or not a SERVER span is made.
    children = ["guard.input", "guard.output", "upstream"]
    spans = [s for s in gw.spans.get_finished_spans() if s.name in children]
    assert sorted(s.name for s in spans) == children
    if ObservabilityMiddleware not in without:
        server = gw.server_span()
        assert all(s.parent is not None and s.parent.span_id == server.context.span_id
                   for s in spans)  # fmt: skip

    # The log line is the request log's alone.
    assert len(gw.request_lines()) == (0 if RequestLogMiddleware in without else 1)
