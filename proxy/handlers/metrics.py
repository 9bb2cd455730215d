"""`GET /metrics`: the gateway's Prometheus text exposition (no authentication, like /healthz).

Some gauges are sampled when scraped rather than on every change (the guards' circuit breaker
states): `before_scrape` callables run first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.observability.metrics import GatewayMetrics


def metrics_route(
    metrics: GatewayMetrics,
    before_scrape: Sequence[Callable[[], None]] = (),
    path: str = "/metrics",
) -> Route:
    """The route serving `metrics`; `before_scrape` may grow after this call (lifespan)."""

    async def scrape(request: Request) -> Response:
        for sample in before_scrape:
            sample()
        body, content_type = metrics.render()
        return Response(body, headers={"content-type": content_type})

    return Route(path, scrape, methods=["GET"])
