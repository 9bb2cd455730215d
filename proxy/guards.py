"""Build the guard backends and the engine from config.yaml's `guards` section.

This is where config (proxy) meets guard_engine: guard_engine knows nothing of config files.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from guard_engine.adapters.registry import get_adapter
from guard_engine.backends.base import Backend
from guard_engine.backends.cascade import CascadeBackend
from guard_engine.backends.cascade_drift import DriftSettings
from guard_engine.backends.distilled_head import load_distilled
from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.backends.windowed import WindowedBackend
from guard_engine.breaker import CircuitBreaker
from guard_engine.cache import VerdictCache
from guard_engine.engine import GuardEngine
from proxy.config_schema import (
    CascadeGuardConfig,
    EmbeddedGuardConfig,
    GatewayConfig,
    GuardConfig,
    SGLangGuardConfig,
)
from proxy.upstreams.h1_transport import H1Transport
from proxy.upstreams.openai_upstream import env_proxy

# The guard `on_guard_error: fallback` uses when a policy's own guard fails.
FALLBACK_GUARD = "__embedded_fallback__"


def _guard_transport(config: SGLangGuardConfig) -> httpx.AsyncBaseTransport | None:
    """The gateway's lean HTTP/1.1 transport for guard calls (httpx's default one costs 1-2 ms
    of CPU per call here, see docs/benchmarks.md), unless an environment proxy applies: then
    httpx's own, which implements proxies."""
    if env_proxy(httpx.URL(config.base_url)) is not None:
        return None
    # One spare connection so that health probes are not starved by busy check slots.
    return H1Transport(max_connections=config.max_concurrency + 1)


def build_cascade(name: str, config: CascadeGuardConfig, model_guard: Backend) -> CascadeBackend:
    """`config.head` is absolute here: `load_config` resolved it and checked that it loads."""
    path = Path(config.head)
    return CascadeBackend(
        name=name,
        head=load_distilled(path),
        head_path=path,
        model_guard=model_guard,
        drift=DriftSettings(
            recheck_sample=config.recheck_sample,
            min_rechecks=config.drift.min_rechecks,
            window=config.drift.window,
            max_disagreement=config.drift.max_disagreement,
        ),
        scorer=EmbeddedBackend(
            name=f"{name}/local",
            threads=config.threads,
            weights_path=path,
            max_queue_wait_ms=config.max_queue_wait_ms,
        ),
    )


def build_backend(name: str, config: GuardConfig) -> Backend:
    """A guard that stands alone (embedded or a model guard); cascades: `build_backends`."""
    if isinstance(config, CascadeGuardConfig):
        raise ValueError(f"guard {name!r} is a cascade: build it with build_backends")
    if isinstance(config, EmbeddedGuardConfig):
        return EmbeddedBackend(
            name=name, threads=config.threads, max_queue_wait_ms=config.max_queue_wait_ms
        )
    model_guard = SGLangBackend(
        name=name,
        base_url=config.base_url,
        model=config.model,
        adapter=get_adapter(config.format),
        timeout_ms=config.timeout_ms,
        max_concurrency=config.max_concurrency,
        api_key=config.api_key or None,
        breaker=CircuitBreaker(config.breaker.failures, config.breaker.reset_s),
        transport=_guard_transport(config),
    )
    # A model guard has a fixed context: longer texts are judged in windows, never a 503.
    return WindowedBackend(model_guard, max_chars=config.max_chars)


def build_backends(config: GatewayConfig) -> dict[str, Backend]:
    backends = {
        name: build_backend(name, guard)
        for name, guard in config.guards.items()
        if not isinstance(guard, CascadeGuardConfig)
    }
    # Cascades last: each wraps a model guard built above (shared, not a copy).
    for name, guard in config.guards.items():
        if isinstance(guard, CascadeGuardConfig):
            backends[name] = build_cascade(name, guard, backends[guard.guard])
    embedded = [b for b in backends.values() if isinstance(b, EmbeddedBackend)]
    # The fallback shares the configured embedded guard's model when there is one: one copy
    # of the embeddings in memory.
    backends[FALLBACK_GUARD] = embedded[0] if embedded else EmbeddedBackend(name="embedded")
    return backends


def build_engine(config: GatewayConfig, *, cache_entries: int = 10000) -> GuardEngine:
    return GuardEngine(
        build_backends(config),
        default_guard=config.default_guard,
        cache=VerdictCache(max_entries=cache_entries) if cache_entries else None,
    )
