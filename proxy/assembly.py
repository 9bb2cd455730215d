"""The one place that builds the gateway's parts and puts them together.

`create_app` (proxy/app.py) owns the routes and the lifespan; this module decides what goes
into them: the observability middlewares and routes (`middleware`, `routes`), and, in the
lifespan, the moderation pipeline with its observers and the per-tenant limits
(`install_parts`). It is the only module that imports both the moderation and the
observability packages: the pipeline reports through interfaces it defines itself
(`proxy.moderation.observer`), and this is where they are given their implementations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.trace import Tracer
from prometheus_client.registry import Collector
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from guard_engine.backends.cascade import CascadeBackend, describe_head
from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.engine import GuardEngine
from guard_engine.errors import GuardError
from guard_engine.image_fetch import ImageFetcher
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.policy.store import PolicyStore, ReloadHook
from guard_engine.shared_cache import RedisVerdictTier
from guard_engine.types import GuardRequest, Verdict
from proxy.admin import AdminGate
from proxy.audit.think import ThinkCheck
from proxy.config_schema import CascadeGuardConfig, GatewayConfig
from proxy.guards import FALLBACK_GUARD, build_engine
from proxy.handlers.metrics import metrics_route
from proxy.moderation.pipeline import ModerationPipeline
from proxy.observability import multiprocess, tracing
from proxy.observability.asgi import ObservabilityMiddleware
from proxy.observability.cascade_metrics import CascadeCollector
from proxy.observability.late_spans import LateTracer
from proxy.observability.metrics import GatewayMetrics
from proxy.observability.moderation_report import ModerationReport
from proxy.observability.moderation_spans import ModerationSpans
from proxy.observability.request_log import RequestLogMiddleware
from proxy.observability.setup import Observability
from proxy.state import GatewayState

log = logging.getLogger("guardline.moderation")


# --- what create_app builds the app with ----------------------------------------------------


def middleware(obs: Observability, config: GatewayConfig) -> list[Middleware]:
    """Outermost first: the SERVER span and request metrics, then the request log line
    (`logging.requests`).

    Nothing else depends on their being here: the deferred work (metrics and audit records of
    a moderation) runs from GatewayMiddleware, which every app has."""
    tracer: Tracer | None = None
    if obs.tracer_provider is not None:
        tracer = obs.tracer
        if config.tracing.late_spans:
            # Opt-in: the SERVER span recorded after the response (proxy.observability.
            # late_spans); a provider without ReservedIds keeps plain SDK spans.
            with contextlib.suppress(ValueError):
                tracer = LateTracer(obs.tracer)
    layers: list[Middleware] = [
        Middleware(ObservabilityMiddleware, tracer=tracer, metrics=obs.metrics)
    ]
    if config.logging.requests:
        layers.append(Middleware(RequestLogMiddleware))
    return layers


def routes(
    obs: Observability, before_scrape: list[Callable[[], None]], admin: AdminGate | None = None
) -> list[BaseRoute]:
    """`GET /metrics` when metrics are on (behind `admin` when it is restricted)."""
    if obs.metrics is None:
        return []
    return [metrics_route(obs.metrics, before_scrape, admin=admin)]


# --- what the lifespan installs ---------------------------------------------------------------


async def install_parts(
    state: GatewayState,
    config: GatewayConfig,
    obs: Observability | None,
    *,
    moderation: bool,
    engine: GuardEngine | None,
    before_scrape: list[Callable[[], None]],
) -> None:
    """Into a freshly built `state`: observability's closer, moderation (when on) with the
    observers of `obs`, and the per-tenant limits (outermost, so that a request over its
    tenant's limit costs no guard check)."""
    if obs is not None:
        state.closers.append(obs.aclose)  # runs last: drains audit, flushes exporters
    if moderation:
        from proxy.limits.spec import LimitTable

        if LimitTable(config.limits).counts_guard_checks:
            # Per-tenant guard-check budgets: the engine counts each request's calls.
            from proxy.counted_engine import CountedEngine

            engine = CountedEngine(engine or build_engine(config))
        await install_moderation(state, config, obs, engine=engine, before_scrape=before_scrape)
    from proxy.limits.service import install_limits

    limiter = install_limits(state, config)
    if limiter is not None and obs is not None and obs.metrics is not None:
        from proxy.limits.metrics import register

        register(limiter, obs.metrics.registry)


async def install_moderation(
    state: GatewayState,
    config: GatewayConfig,
    obs: Observability | None = None,
    *,
    engine: GuardEngine | None = None,
    before_scrape: list[Callable[[], None]] | None = None,
    watch_policies: bool = True,
) -> ModerationPipeline:
    """The moderation pipeline (engine, policies, image fetcher) as the state's chat service,
    observed by `obs` (spans, metrics, audit, THINK re-checks) when given; its readiness
    probes and closers registered on `state`."""
    engine = engine or build_engine(config)
    report: ModerationReport | None = None
    if obs is not None:
        think = obs.think_scheduler(think_check(engine), background=state.background)
        report = ModerationReport(
            engine=engine,
            metrics=obs.metrics,
            writer=obs.writer,
            think=think,
            log_content=config.logging.content,
        )
        if before_scrape is not None:
            before_scrape.append(report.sample_breakers)
        if obs.metrics is not None:
            _install_collectors(state, obs.metrics, engine, before_scrape)
    store = PolicyStore(
        [route.policy for route in config.routes],
        known_guards=[g for g in engine.guards if g != FALLBACK_GUARD],
        on_reload=_log_reload if report is None else _logged(report.reloaded),
    )
    fetcher = ImageFetcher()
    pipeline = ModerationPipeline(
        engine=engine,
        policies=store,
        fetcher=fetcher,
        observer=ModerationSpans(
            obs.tracer if obs is not None else None,
            record_content=config.tracing.record_content,
            late_spans=config.tracing.late_spans,
        ),
        on_finished=report.finished if report is not None else None,
        on_shadow=report.shadow if report is not None else None,
        background=state.background,
    )
    state.chat_service = pipeline
    state.moderation = pipeline

    # Load the embedded model before the first request, not during it. A model that cannot
    # load is reported by /readyz (and each check fails per on_guard_error), not a crash.
    for name in referenced_guards(config, store):
        backend = engine.guards.get(name)
        if isinstance(backend, EmbeddedBackend | CascadeBackend):
            try:
                await backend.warm()
            except GuardError as exc:
                log.error("embedded guard %s cannot load: %s", name, exc)

    watcher = asyncio.ensure_future(store.watch()) if watch_policies else None

    async def guards_ready() -> tuple[bool, dict[str, Any]]:
        needed = referenced_guards(config, store)
        detail: dict[str, Any] = {}
        ok = True
        for name, backend in engine.guards.items():
            if name == FALLBACK_GUARD:
                continue
            if name not in needed:
                detail[name] = {"ok": None, "detail": "not used by any policy"}
                continue
            health = await backend.health()
            detail[name] = {"ok": health.ok, "detail": health.detail}
            if isinstance(backend, CascadeBackend):
                detail[name]["cascade"] = backend.describe()
            if health.endpoints:  # a guard with replicas: each one's own health
                detail[name]["endpoints"] = {
                    url: {"ok": h.ok, "detail": h.detail} for url, h in health.endpoints
                }
            ok = ok and health.ok
        return ok, {"guards": detail}

    async def policies_ready() -> tuple[bool, dict[str, Any]]:
        # An invalid edit keeps the last good version serving: reported, still ready.
        serving = {path: p.ref for path, p in store.policies().items()}
        body: dict[str, Any] = {"serving": serving, "rejected_edits": store.errors()}
        heads = policy_heads(engine, store.policies().values())
        if heads:
            body["heads"] = heads  # which distilled head answers for which policy
        return True, {"policies": body}

    async def shadow_report() -> tuple[bool, dict[str, Any]]:
        counts = {
            f"{ref}->{shadow}:{stage}": {"compared": n, "disagreements": d}
            for (ref, shadow, stage), (n, d) in pipeline.shadows.counts.items()
        }
        return True, {"shadow": counts}

    async def close() -> None:
        store.close()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        await fetcher.aclose()
        await engine.aclose()

    state.readiness.extend([guards_ready, policies_ready, shadow_report])
    state.closers.append(close)
    if report is not None and report.think is not None:
        # The state drains its background tasks (re-checks included) before any closer runs;
        # this stops the scheduler for good, before the engine closes and the audit drains.
        state.closers.append(report.think.aclose)
    return pipeline


def _install_collectors(
    state: GatewayState,
    metrics: GatewayMetrics,
    engine: GuardEngine,
    before_scrape: list[Callable[[], None]] | None,
) -> None:
    """The metrics read from the engine at scrape time (cascade answers, shared-cache
    lookups): in the registry, or, with several workers, copied into the shared files."""
    collectors: list[Collector] = [CascadeCollector(engine)]
    shared = engine.cache.shared if engine.cache is not None else None
    if isinstance(shared, RedisVerdictTier):
        from proxy.observability.shared_cache_metrics import SharedCacheCollector

        collectors.append(SharedCacheCollector(shared))
    if not multiprocess.enabled():
        for collector in collectors:
            metrics.registry.register(collector)
        return
    mirror = multiprocess.CollectorMirror(collectors)
    if before_scrape is not None:
        before_scrape.append(mirror.sync)
    copying = asyncio.ensure_future(mirror.run())

    async def stop_copying() -> None:
        copying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await copying

    state.closers.append(stop_copying)


def referenced_guards(config: GatewayConfig, store: PolicyStore) -> set[str]:
    """Guards some request may need now: the default, any a loaded policy names, and the
    model guard of each of those that is a cascade."""
    names = {config.default_guard}
    names.update(p.guard for p in store.policies().values() if p.guard)
    for name in list(names):
        guard = config.guards.get(name)
        if isinstance(guard, CascadeGuardConfig):
            names.add(guard.guard)
    if any(p.on_guard_error == "fallback" for p in store.policies().values()):
        names.add(FALLBACK_GUARD)
    return names


def policy_heads(engine: GuardEngine, policies: Iterable[CompiledPolicy]) -> dict[str, Any]:
    """policy@hash -> the cascade guard it uses and that guard's head, for policies whose
    guard (or the default one) is a cascade."""
    out: dict[str, Any] = {}
    for policy in policies:
        backend = engine.guards.get(policy.guard or engine.default_guard)
        if isinstance(backend, CascadeBackend):
            out[policy.ref] = {
                "guard": backend.name,
                **describe_head(backend.head_path, backend.head),
                "local_answers": "active" if backend.local_suspended is None else "suspended",
                # A head distilled from another policy version was measured on other labels.
                "head_matches_policy": backend.head.meta.policy == policy.ref,
            }
    return out


def think_check(engine: GuardEngine) -> ThinkCheck:
    """The THINK re-check: the same guard in THINK mode, in the decision's trace."""

    async def check(request: GuardRequest, policy: CompiledPolicy) -> Verdict:
        # Runs in a task started from the request, so its trace context is the request's.
        return await engine.check(request, policy, mode="think", headers=tracing.inject() or None)

    return check


def _log_reload(path: str, policy: CompiledPolicy | None, error: str | None) -> None:
    if policy is not None:
        log.info("policy reloaded: %s -> %s", path, policy.ref)
    else:
        log.error("policy edit rejected, last good version keeps serving: %s", error)


def _logged(hook: ReloadHook) -> ReloadHook:
    def on_reload(path: str, policy: CompiledPolicy | None, error: str | None) -> None:
        _log_reload(path, policy, error)
        hook(path, policy, error)

    return on_reload
