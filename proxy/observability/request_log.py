"""The one log line per request, and the request-level moderation attributes of the SERVER span.

Pure ASGI, placed just inside `ObservabilityMiddleware` (so its SERVER span is current and the
line carries its trace and span ids) and outside `GatewayMiddleware` (so the status is what the
client got, error renders included). What it reports comes from `scope["state"]`: request id,
tenant and route (set by the middleware and the handler) and, for a moderated request, the
`ModerationSummary` the pipeline's report left there (policy, verdicts, timings). It also runs
the report's work deferred until the response has gone out (metrics, audit records).

A monitor-mode stream settles its moderation after the response has ended: its line has the
HTTP facts only; its decisions are in the metrics and the audit trail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import structlog
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.disconnect import unanswered_status
from proxy.observability import tracing
from proxy.observability.after_response import run_after_response
from proxy.observability.asgi import (
    STATE_REQUEST_ID,
    STATE_ROUTE,
    STATE_START,
    STATE_TENANT,
)
from proxy.observability.logs import log_request
from proxy.observability.timing import RequestTiming

STATE_MODERATION: Final = "moderation"  # scope["state"] key of the request's ModerationSummary


@dataclass(slots=True)
class ModerationSummary:
    """One request's moderation, as the request log line and the SERVER span show it."""

    policy: str  # name@hash8
    input: str  # safe | unsafe | skipped | degraded
    output: str
    categories: tuple[str, ...]
    degraded: tuple[str, ...]  # "stage:reason"
    stream: bool
    model: str
    timing: RequestTiming  # finished: its durations are final
    holdback_checks: int | None = None
    prompt: str | None = None  # only with logging.content
    response: str | None = None

    @property
    def verdict(self) -> str:
        """The request's overall verdict: unsafe beats degraded beats safe beats skipped."""
        statuses = (self.input, self.output)
        for status in ("unsafe", "degraded", "safe"):
            if status in statuses:
                return status
        return "skipped"

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "policy": self.policy,
            "input_verdict": self.input,
            "output_verdict": self.output,
            "categories": list(self.categories),
            "degraded": list(self.degraded),
            "stream": self.stream,
            "model": self.model,
            "timings_ms": self.timing.durations_ms(),
        }
        if self.holdback_checks is not None:
            fields["holdback_checks"] = self.holdback_checks
        if self.prompt is not None:
            fields["prompt"] = self.prompt
        if self.response is not None:
            fields["response"] = self.response
        return fields


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, *, logger: Any = None) -> None:
        self.app = app
        self.log = logger if logger is not None else structlog.get_logger("guardline.request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        started = state.get(STATE_START)
        if not isinstance(started, float):
            started = state[STATE_START] = time.perf_counter()
        status = 0  # no response start yet: see unanswered_status below

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The response is out (or failed): the moderation report's deferred work, then
            # the request's line.
            run_after_response(state)
            self._report(scope, state, status or unanswered_status(state), started)

    def _report(self, scope: Scope, state: dict[str, Any], status: int, started: float) -> None:
        summary = state.get(STATE_MODERATION)
        fields: dict[str, Any] = {
            "request_id": state.get(STATE_REQUEST_ID),
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "tenant": state.get(STATE_TENANT),
            "route": state.get(STATE_ROUTE),
        }
        if isinstance(summary, ModerationSummary):
            _annotate_span(summary)
            fields.update(summary.log_fields())
        else:
            fields["timings_ms"] = {"total": round((time.perf_counter() - started) * 1000.0, 3)}
        log_request(self.log, **fields)


def _annotate_span(summary: ModerationSummary) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes(
        {
            tracing.ATTR_POLICY: summary.policy,
            tracing.ATTR_POLICY_HASH: summary.policy.rpartition("@")[2],
            tracing.ATTR_VERDICT: summary.verdict,
            tracing.ATTR_CATEGORIES: list(summary.categories),
            tracing.ATTR_DEGRADED: bool(summary.degraded),
            "guardline.input.verdict": summary.input,
            "guardline.output.verdict": summary.output,
        }
    )
