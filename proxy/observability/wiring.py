"""Observability in the running gateway: which middlewares and routes the app gets, and the
moderation pipeline installed with its observers (spans, metrics, audit, THINK, request log).

`create_app` calls `middleware(obs)` and `routes(obs, before_scrape)` when it builds the app, and
`install_observed_moderation(...)` in its lifespan instead of the bare `install_moderation`.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from guard_engine.engine import GuardEngine
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Verdict
from proxy.admin import AdminGate
from proxy.audit.think import ThinkCheck
from proxy.config_schema import GatewayConfig
from proxy.handlers.metrics import metrics_route
from proxy.moderation.pipeline import ModerationPipeline
from proxy.moderation.report import ModerationReport
from proxy.observability import tracing
from proxy.observability.asgi import ObservabilityMiddleware
from proxy.observability.request_log import RequestLogMiddleware
from proxy.observability.setup import Observability
from proxy.state import GatewayState


def middleware(obs: Observability) -> list[Middleware]:
    """Outermost first: the SERVER span and request metrics, then the request log line."""
    tracer = obs.tracer if obs.tracer_provider is not None else None
    return [
        Middleware(ObservabilityMiddleware, tracer=tracer, metrics=obs.metrics),
        Middleware(RequestLogMiddleware),
    ]


def routes(
    obs: Observability, before_scrape: list[Callable[[], None]], admin: AdminGate | None = None
) -> list[BaseRoute]:
    """`GET /metrics` when metrics are on (behind `admin` when it is restricted)."""
    if obs.metrics is None:
        return []
    return [metrics_route(obs.metrics, before_scrape, admin=admin)]


def think_check(engine: GuardEngine) -> ThinkCheck:
    """The THINK re-check: the same guard in THINK mode, in the decision's trace."""

    async def check(request: GuardRequest, policy: CompiledPolicy) -> Verdict:
        # Runs in a task started from the request, so its trace context is the request's.
        return await engine.check(request, policy, mode="think", headers=tracing.inject() or None)

    return check


async def install_observed_moderation(
    state: GatewayState,
    config: GatewayConfig,
    obs: Observability,
    *,
    engine: GuardEngine | None = None,
    before_scrape: list[Callable[[], None]] | None = None,
) -> ModerationPipeline:
    """The moderation pipeline with every observer of `obs` attached; closers registered."""
    from proxy.guards import build_engine
    from proxy.moderation.wiring import install_moderation

    engine = engine or build_engine(config)
    think = obs.think_scheduler(think_check(engine), background=state.background)
    report = ModerationReport(
        engine=engine,
        metrics=obs.metrics,
        writer=obs.writer,
        think=think,
        log_content=config.logging.content,
    )
    pipeline = await install_moderation(
        state,
        config,
        engine=engine,
        on_finished=report.finished,
        on_shadow=report.shadow,
        on_reload=report.reloaded,
        tracer=obs.tracer,
        record_content=config.tracing.record_content,
    )
    if before_scrape is not None:
        before_scrape.append(report.sample_breakers)
    if think is not None:
        # The state drains its background tasks (re-checks included) before any closer runs;
        # this stops the scheduler for good, before the engine closes and the audit drains.
        state.closers.append(think.aclose)
    return pipeline
