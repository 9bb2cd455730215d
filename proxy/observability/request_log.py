"""The one log line per request.

Pure ASGI, placed just inside `ObservabilityMiddleware` (so its SERVER span is current and the
line carries its trace and span ids) and outside `GatewayMiddleware` (so the status is what the
client got, error renders included). What it reports comes from the request's context
(`proxy.context`): request id, tenant and route (set by the middleware and the handler) and,
for a moderated request, the `ModerationSummary` the moderation report left there (policy,
verdicts, timings). It records nothing else: spans, metrics and audit records do not depend
on this middleware being installed.

A monitor-mode stream settles its moderation after the response has ended: its line has the
HTTP facts only; its decisions are in the metrics and the audit trail.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.context import RequestContext, request_context
from proxy.observability.logs import log_request


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, *, logger: Any = None) -> None:
        self.app = app
        self.log = logger if logger is not None else structlog.get_logger("guardline.request")

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

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._report(scope, context, status or context.unanswered_status())

    def _report(self, scope: Scope, context: RequestContext, status: int) -> None:
        fields: dict[str, Any] = {
            "request_id": context.request_id or None,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "tenant": context.tenant,
            "route": context.route,
        }
        if context.moderation is not None:
            fields.update(context.moderation.log_fields())
        else:
            fields["timings_ms"] = {
                "total": round((time.perf_counter() - context.start) * 1000.0, 3)
            }
        log_request(self.log, **fields)
