"""Adapter lookup by the `format` name a guard is configured with in config.yaml."""

from __future__ import annotations

from collections.abc import Callable

from guard_engine.adapters.base import Adapter
from guard_engine.adapters.llama_guard import LlamaGuard3Adapter
from guard_engine.adapters.nemotron import NemotronAdapter

_FACTORIES: dict[str, Callable[[], Adapter]] = {
    NemotronAdapter.name: NemotronAdapter,
    LlamaGuard3Adapter.name: LlamaGuard3Adapter,
}

ADAPTER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_adapter(format_name: str) -> Adapter:
    """A new adapter for `format_name` ("nemotron-3.5", "llama-guard-3").

    Raises ValueError naming the known formats for anything else (config validation shows it).
    """
    try:
        factory = _FACTORIES[format_name]
    except KeyError:
        known = ", ".join(ADAPTER_NAMES)
        raise ValueError(f"unknown guard format {format_name!r} (known: {known})") from None
    return factory()
