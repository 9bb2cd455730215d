"""Build the guard backends and the engine from config.yaml's `guards` section.

This is where config (proxy) meets guard_engine: guard_engine knows nothing of config files.
"""

from __future__ import annotations

from guard_engine.adapters.registry import get_adapter
from guard_engine.backends.base import Backend
from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.breaker import CircuitBreaker
from guard_engine.cache import VerdictCache
from guard_engine.engine import GuardEngine
from proxy.config_schema import EmbeddedGuardConfig, GatewayConfig, GuardConfig

# The guard `on_guard_error: fallback` uses when a policy's own guard fails.
FALLBACK_GUARD = "__embedded_fallback__"


def build_backend(name: str, config: GuardConfig) -> Backend:
    if isinstance(config, EmbeddedGuardConfig):
        return EmbeddedBackend(name=name, threads=config.threads)
    return SGLangBackend(
        name=name,
        base_url=config.base_url,
        model=config.model,
        adapter=get_adapter(config.format),
        timeout_ms=config.timeout_ms,
        max_concurrency=config.max_concurrency,
        api_key=config.api_key or None,
        breaker=CircuitBreaker(config.breaker.failures, config.breaker.reset_s),
    )


def build_backends(config: GatewayConfig) -> dict[str, Backend]:
    backends = {name: build_backend(name, guard) for name, guard in config.guards.items()}
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
