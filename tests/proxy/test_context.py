"""RequestContext: one per request, created by the first caller; deferred work runs once the
response is out, in order, and a failing piece of work never breaks the others."""

from __future__ import annotations

import logging

import pytest

from proxy.context import CLIENT_CLOSED_STATUS, RequestContext, request_context


def test_one_context_per_scope_created_by_the_first_caller() -> None:
    scope: dict[str, object] = {"type": "http"}
    first = request_context(scope)
    first.route = "kids"
    assert request_context(scope) is first
    assert request_context({"type": "http"}) is not first


def test_deferred_work_waits_for_the_response_then_runs_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = RequestContext(start=0.0)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("metrics down")

    context.after_response(lambda: ran.append("metrics"))
    context.after_response(broken)
    context.after_response(lambda: ran.append("audit"))
    assert ran == []
    with caplog.at_level(logging.ERROR, logger="guardline.context"):
        context.run_after_response()
    assert ran == ["metrics", "audit"]
    assert "after-response work failed" in caplog.text
    # A monitor-mode stream settles after the response: its work runs at once.
    context.after_response(lambda: ran.append("settled"))
    assert ran == ["metrics", "audit", "settled"]
    context.run_after_response()  # nothing queued twice
    assert ran == ["metrics", "audit", "settled"]


def test_unanswered_status() -> None:
    context = RequestContext(start=0.0)
    assert context.unanswered_status() == 500
    context.client_closed = True
    assert context.unanswered_status() == CLIENT_CLOSED_STATUS == 499
