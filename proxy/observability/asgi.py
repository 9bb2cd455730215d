"""Pure ASGI middleware for the per-request observability that wraps everything else: the SERVER
span (continuing the client's traceparent) and the request count/latency metrics.

Put it outermost, so that the request's context (`proxy.context`) is created here and its
clock starts before body reading, authentication and routing: the pipeline's timing ledger
starts at `context.start` and the overhead it reports covers the whole request, as a client
measures it. Handlers name the matched route and tenant in the context for the span and the
metric labels; the request id and, for a moderated request, its `ModerationSummary` go on the
span too.
"""

from __future__ import annotations

import time
from typing import Final

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, use_span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.context import ModerationSummary, RequestContext, request_context
from proxy.observability import tracing
from proxy.observability.metrics import GatewayMetrics

UNMATCHED_ROUTE: Final = "unmatched"


class ObservabilityMiddleware:
    """SERVER span + request metrics around the app. Either part may be None (switched off)."""

    def __init__(
        self, app: ASGIApp, *, tracer: Tracer | None = None, metrics: GatewayMetrics | None = None
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = request_context(scope)
        status = 0  # no response start yet: see unanswered_status below

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if self.tracer is None:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                self._observe(context, status or context.unanswered_status())
            return

        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in tracing.TRACE_HEADERS
        }
        method = scope["method"]
        span = self.tracer.start_span(
            f"{method} {scope['path']}",
            context=tracing.extract_context(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        try:
            with use_span(span, end_on_exit=False, record_exception=True):
                await self.app(scope, receive, send_wrapper)
        finally:
            status = status or context.unanswered_status()
            self._finish_span(span, method, context, status)
            self._observe(context, status)

    def _finish_span(self, span: Span, method: str, context: RequestContext, status: int) -> None:
        if span.is_recording():
            if status == 404 and context.route is None:
                # Unknown paths would make one span name per path: name the method only.
                span.update_name(method)
            span.set_attribute("http.response.status_code", status)
            for attribute, value in (
                (tracing.ATTR_ROUTE, context.route),
                (tracing.ATTR_TENANT, context.tenant),
                (tracing.ATTR_REQUEST_ID, context.request_id or None),
            ):
                if value is not None:
                    span.set_attribute(attribute, value)
            if context.moderation is not None:
                _annotate_moderation(span, context.moderation)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _observe(self, context: RequestContext, status: int) -> None:
        if self.metrics is None:
            return
        self.metrics.observe_request(
            context.route or UNMATCHED_ROUTE, status, time.perf_counter() - context.start
        )


def _annotate_moderation(span: Span, summary: ModerationSummary) -> None:
    """The request-level moderation attributes of the SERVER span."""
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
