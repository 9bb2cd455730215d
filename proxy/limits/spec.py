"""The limits that apply to one tenant, resolved once from the config."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config_schema import LimitsConfig, LimitSpec

WINDOW_MS = 60_000  # every limit is per minute, over a sliding window


@dataclass(frozen=True, slots=True)
class Limits:
    """0 means no limit."""

    requests: int = 0
    tokens: int = 0
    concurrent: int = 0

    @property
    def any(self) -> bool:
        return bool(self.requests or self.tokens or self.concurrent)


def _pick(own: int | None, default: int | None) -> int:
    if own is not None:
        return own
    return default or 0


def resolve(own: LimitSpec | None, default: LimitSpec) -> Limits:
    own = own or LimitSpec()
    return Limits(
        requests=_pick(own.requests_per_minute, default.requests_per_minute),
        tokens=_pick(own.tokens_per_minute, default.tokens_per_minute),
        concurrent=_pick(own.concurrent_requests, default.concurrent_requests),
    )


class LimitTable:
    """Tenant name (None: no tenants configured, the open gateway) -> its Limits, or None."""

    def __init__(self, config: LimitsConfig) -> None:
        self._default = resolve(None, config.default)
        self._tenants = {
            name: resolve(spec, config.default) for name, spec in config.tenants.items()
        }

    def get(self, tenant: str | None) -> Limits | None:
        limits = self._default if tenant is None else self._tenants.get(tenant, self._default)
        return limits if limits.any else None

    @property
    def empty(self) -> bool:
        return not self._default.any and not any(v.any for v in self._tenants.values())
