"""One request's own state, typed: `RequestContext`, kept in the ASGI scope.

Middlewares, handlers and the moderation pipeline share what they learn about a request
(its id, route, tenant, when it started, its moderation summary, work to run once the
response is out) through this one object instead of string keys in `scope["state"]`.
`request_context(scope)` is the one way to get it; the first caller (the outermost
middleware) creates it, so its clock starts with the request's first byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.types import Scope

from proxy.timing import RequestTiming

# The scope key (ASGI allows extra keys; Starlette passes the scope dict through unchanged).
CONTEXT_KEY: Final = "guardline.context"
# nginx's "client closed request": what logs and metrics record for a request whose client
# left before any response was sent (a 500 would count the client's choice as our failure).
CLIENT_CLOSED_STATUS: Final = 499

log = logging.getLogger("guardline.context")


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


@dataclass(slots=True)
class RequestContext:
    """What the gateway knows about one request while it is served."""

    start: float  # perf_counter() when the outermost middleware saw the request
    request_id: str = ""  # x-guardline-request-id (GatewayMiddleware)
    route: str | None = None  # the matched route's name (the handler)
    tenant: str | None = None  # the authenticated tenant (the handler)
    client_closed: bool = False  # the client left before the response began
    moderation: ModerationSummary | None = None  # left by the moderation report
    responded: bool = False  # the response is out: deferred work now runs at once
    _after_response: list[Callable[[], None]] = field(default_factory=list)

    def unanswered_status(self) -> int:
        """The status to record for a request that sent no response start."""
        return CLIENT_CLOSED_STATUS if self.client_closed else 500

    def after_response(self, work: Callable[[], None]) -> None:
        """Run `work` (metrics, audit records) once the response has been sent, so the client
        never waits for it; at once when the response is already out (a monitor-mode stream
        settles after it)."""
        if self.responded:
            work()
        else:
            self._after_response.append(work)

    def run_after_response(self) -> None:
        """The response is out: run the queued work in order (a failure is logged, never
        raised). GatewayMiddleware, which every app has, calls this: nothing recorded depends
        on which other middlewares are installed."""
        self.responded = True
        queued, self._after_response = self._after_response, []
        for work in queued:
            try:
                work()
            except Exception:
                log.exception("after-response work failed")


def request_context(scope: Scope) -> RequestContext:
    """The request's context, created by the first caller (the outermost middleware)."""
    context = scope.get(CONTEXT_KEY)
    if context is None:
        context = scope[CONTEXT_KEY] = RequestContext(start=time.perf_counter())
    assert isinstance(context, RequestContext)
    return context
