"""Build the guard backends and the engine from config.yaml's `guards` section.

This is where config (proxy) meets guard_engine: guard_engine knows nothing of config files.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from guard_engine.adapters.registry import get_adapter
from guard_engine.backends.balanced import BalancedBackend
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
from guard_engine.shared_cache import RedisVerdictTier
from proxy.config_schema import (
    CacheConfig,
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


def _guard_transport(config: SGLangGuardConfig, url: str) -> httpx.AsyncBaseTransport | None:
    """The gateway's lean HTTP/1.1 transport for guard calls (httpx's default one costs 1-2 ms
    of CPU per call here, see docs/benchmarks.md), unless an environment proxy applies: then
    httpx's own, which implements proxies."""
    if env_proxy(httpx.URL(url)) is not None:
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
    urls = config.urls
    replicas = [
        SGLangBackend(
            name=name,
            base_url=url,
            model=config.model,
            adapter=get_adapter(config.format),
            timeout_ms=config.timeout_ms,
            max_concurrency=config.max_concurrency,
            api_key=config.api_key or None,
            # Per endpoint: one dead replica must not stop the others being called.
            breaker=CircuitBreaker(config.breaker.failures, config.breaker.reset_s),
            transport=_guard_transport(config, url),
            # With replicas, a failed call is retried on another one at once.
            retry_here=len(urls) == 1,
        )
        for url in urls
    ]
    model_guard: Backend = (
        replicas[0]
        if len(replicas) == 1
        else BalancedBackend(replicas, timeout_ms=config.timeout_ms)
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


def build_cache(config: CacheConfig) -> VerdictCache | None:
    """config.yaml's `cache`: the LRU, with the Redis tier behind it when `redis_url` is set;
    None when both are off."""
    shared = None
    if config.redis_url:
        shared = RedisVerdictTier(
            config.redis_url,
            prefix=config.key_prefix,
            ttl_s=config.ttl_s,
            timeout_s=config.redis_timeout_ms / 1000,
        )
    if not config.entries and shared is None:
        return None
    return VerdictCache(max_entries=config.entries, ttl_s=config.ttl_s, shared=shared)


def build_engine(config: GatewayConfig, *, cached: bool = True) -> GuardEngine:
    """`cached=False`: no verdict cache at all (one-off checks from the command line)."""
    return GuardEngine(
        build_backends(config),
        default_guard=config.default_guard,
        cache=build_cache(config.cache) if cached else None,
    )
