"""`GET /metrics`: the gateway's Prometheus text exposition (open, or behind `server.admin_key`).

Some gauges are sampled when scraped rather than on every change (the guards' circuit breaker
states): `before_scrape` callables run first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.admin import AdminGate
from proxy.errors import Unauthorized
from proxy.observability.metrics import GatewayMetrics


def metrics_route(
    metrics: GatewayMetrics,
    before_scrape: Sequence[Callable[[], None]] = (),
    path: str = "/metrics",
    *,
    admin: AdminGate | None = None,
) -> Route:
    """The route serving `metrics`; `before_scrape` may grow after this call (lifespan)."""

    async def scrape(request: Request) -> Response:
        if admin is not None and not admin.allows(request):
            raise Unauthorized("The admin key is required for /metrics.")
        for sample in before_scrape:
            sample()
        body, content_type = metrics.render()
        return Response(body, headers={"content-type": content_type})

    return Route(path, scrape, methods=["GET"])
