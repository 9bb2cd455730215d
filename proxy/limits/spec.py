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


ANONYMOUS = "-"  # the key of the open gateway's (no tenants) callers, who share one set


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """One set of counters a request is checked against and counted in."""

    key: str  # the store's key: the tenant, `<tenant>@<route>` or `<tenant>#guard`
    limits: Limits
    label: str  # for messages: "tenant 'acme'", "tenant 'acme' on route 'chat'"
    # "guard": the tenant's guard-check budget, kept in the `tokens` counter of its own key
    # (a sliding-window counter too: admitted while under the budget, counted at the end).
    kind: str = "limits"


def _guard_checks(own: LimitSpec | None, default: LimitSpec) -> int:
    return _pick(own.guard_checks_per_minute if own else None, default.guard_checks_per_minute)


class LimitTable:
    """Tenant (None: no tenants configured, the open gateway) and route -> the scopes that
    apply: the tenant's own limits, the tenant-on-this-route limits if the route has any, and
    the tenant's guard-check budget."""

    def __init__(self, config: LimitsConfig) -> None:
        self._default = resolve(None, config.default)
        self._tenants = {
            name: resolve(spec, config.default) for name, spec in config.tenants.items()
        }
        self._routes = {name: resolve(spec, LimitSpec()) for name, spec in config.routes.items()}
        self._routes = {name: limits for name, limits in self._routes.items() if limits.any}
        self._default_checks = _guard_checks(None, config.default)
        self._checks = {
            name: _guard_checks(spec, config.default) for name, spec in config.tenants.items()
        }

    def get(self, tenant: str | None, route: str = "") -> list[ScopeLimits]:
        limits = self._default if tenant is None else self._tenants.get(tenant, self._default)
        key = ANONYMOUS if tenant is None else tenant
        who = "this gateway" if tenant is None else f"tenant '{tenant}'"
        scopes = [ScopeLimits(key, limits, who)] if limits.any else []
        on_route = self._routes.get(route)
        if on_route is not None:
            scopes.append(ScopeLimits(f"{key}@{route}", on_route, f"{who} on route '{route}'"))
        checks = (
            self._default_checks
            if tenant is None
            else self._checks.get(tenant, self._default_checks)
        )
        if checks:
            scopes.append(ScopeLimits(f"{key}#guard", Limits(tokens=checks), who, kind="guard"))
        return scopes

    @property
    def counts_guard_checks(self) -> bool:
        return bool(self._default_checks or any(self._checks.values()))

    @property
    def empty(self) -> bool:
        return not (
            self._default.any
            or self._routes
            or any(v.any for v in self._tenants.values())
            or self.counts_guard_checks
        )
