"""Pure ASGI middleware for the per-request observability that wraps everything else: the SERVER
span (continuing the client's traceparent), the request count/latency metrics, and the request's
start time for the timing ledger.

Put it outermost, so that its clock starts before body reading, authentication and routing:
the pipeline then builds `RequestTiming(start=request_start(scope))` and the overhead it
reports covers the whole request, as a client measures it. Handlers name the matched route and
tenant in `scope["state"]` (`route`, `tenant`) for the span and the metric labels; the
request id that GatewayMiddleware puts there (`request_id`) goes on the span too.
"""

from __future__ import annotations

import time
from typing import Final

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, use_span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.disconnect import unanswered_status
from proxy.observability import tracing
from proxy.observability.metrics import GatewayMetrics

STATE_START: Final = "request_start"  # perf_counter() at the first byte of the request
STATE_ROUTE: Final = "route"
STATE_TENANT: Final = "tenant"
STATE_REQUEST_ID: Final = "request_id"  # set by proxy.middleware.GatewayMiddleware
UNMATCHED_ROUTE: Final = "unmatched"


def request_start(scope: Scope) -> float | None:
    """When the middleware saw the request (perf_counter seconds), if it ran."""
    value = scope.get("state", {}).get(STATE_START)
    return value if isinstance(value, float) else None


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
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state[STATE_START] = started
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
                self._observe(state, status or unanswered_status(state), started)
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
            status = status or unanswered_status(state)
            self._finish_span(span, method, state, status)
            self._observe(state, status, started)

    def _finish_span(self, span: Span, method: str, state: dict[str, object], status: int) -> None:
        if span.is_recording():
            if status == 404 and STATE_ROUTE not in state:
                # Unknown paths would make one span name per path: name the method only.
                span.update_name(method)
            span.set_attribute("http.response.status_code", status)
            for key, attribute in (
                (STATE_ROUTE, tracing.ATTR_ROUTE),
                (STATE_TENANT, tracing.ATTR_TENANT),
                (STATE_REQUEST_ID, tracing.ATTR_REQUEST_ID),
            ):
                value = state.get(key)
                if isinstance(value, str):
                    span.set_attribute(attribute, value)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _observe(self, state: dict[str, object], status: int, started: float) -> None:
        if self.metrics is None:
            return
        route = state.get(STATE_ROUTE)
        self.metrics.observe_request(
            route if isinstance(route, str) else UNMATCHED_ROUTE,
            status,
            time.perf_counter() - started,
        )
