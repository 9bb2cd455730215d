"""Put moderation into a gateway state: engine, policies, image fetcher, pipeline, probes.

Called from the app's lifespan, on the serving event loop. Everything built here is closed
through `state.closers`; the policy watcher runs as a task for the app's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry.trace import Tracer

from guard_engine.backends.cascade import CascadeBackend, describe_head
from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.engine import GuardEngine
from guard_engine.errors import GuardError
from guard_engine.image_fetch import ImageFetcher
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.policy.store import PolicyStore, ReloadHook
from proxy.config_schema import CascadeGuardConfig, GatewayConfig
from proxy.guards import FALLBACK_GUARD, build_engine
from proxy.moderation.pipeline import Finished, ModerationPipeline
from proxy.moderation.shadow import ShadowHook
from proxy.state import GatewayState

log = logging.getLogger("guardline.moderation")


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


async def install_moderation(
    state: GatewayState,
    config: GatewayConfig,
    *,
    engine: GuardEngine | None = None,
    on_finished: Finished | None = None,
    watch_policies: bool = True,
    tracer: Tracer | None = None,
    on_shadow: ShadowHook | None = None,
    on_reload: ReloadHook | None = None,
    record_content: bool = False,
) -> ModerationPipeline:
    engine = engine or build_engine(config)
    store = PolicyStore(
        [route.policy for route in config.routes],
        known_guards=[g for g in engine.guards if g != FALLBACK_GUARD],
        on_reload=_log_reload if on_reload is None else _logged(on_reload),
    )
    fetcher = ImageFetcher()
    pipeline = ModerationPipeline(
        engine=engine,
        policies=store,
        fetcher=fetcher,
        tracer=tracer,
        on_finished=on_finished,
        on_shadow=on_shadow,
        record_content=record_content,
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
    return pipeline


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
