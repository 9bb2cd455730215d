"""Load config.yaml into a validated `GatewayConfig`, or refuse with the file, line and key.

`guard_engine.yaml_model` does the parsing, `${VAR}` interpolation and schema validation;
this module adds what a schema alone cannot check: that names refer to things that exist
(routes -> upstreams, tenants, policy files; default_guard -> guards), and it resolves
relative paths against the config file's directory so the server's working directory
does not matter.

Paths are made absolute without following symlinks: in a Kubernetes ConfigMap volume
`default.yaml` is a symlink through `..data` into a timestamped directory that the next
update deletes. The policy watcher must keep the path as mounted to see that update
(guard_engine.policy.store), so resolving it here would freeze the policy at its first
version.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from guard_engine.backends.distilled_head import load_distilled
from guard_engine.errors import ConfigFileError
from guard_engine.yaml_model import KeyPath, environ, load_yaml_text, validate
from proxy.config_schema import (
    CascadeGuardConfig,
    GatewayConfig,
    GuardConfig,
    RouteConfig,
    SGLangGuardConfig,
    TenantConfig,
)

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, interpolate, validate and cross-check a config file.

    Every `routes[i].policy` and `audit.path` of the result is an absolute path.
    Raises `ConfigFileError` naming the file, the line and the key of the first problem.
    """
    p = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(p, f"cannot read file: {exc.strerror or exc}") from None
    data, lines = load_yaml_text(text, path=p, env=environ() if env is None else env)
    config = validate(GatewayConfig, data, path=p, lines=lines)
    base = Path(os.path.abspath(path)).parent
    checker = _Checker(p, lines)
    routes = [checker.route(i, r, config, base) for i, r in enumerate(config.routes)]
    checker.unique_route_names(routes)
    checker.default_guard(config)
    guards = {name: checker.cascade(name, g, config, base) for name, g in config.guards.items()}
    checker.tenant_keys(config.auth.tenants)
    checker.limit_tenants(config)
    checker.one_audit_store(config)
    audit = config.audit.model_copy(update={"path": str(_resolve(base, config.audit.path))})
    return config.model_copy(update={"routes": routes, "audit": audit, "guards": guards})


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


class _Checker:
    """Cross-reference checks; each failure is a ConfigFileError at the offending key."""

    def __init__(self, path: str, lines: dict[KeyPath, int]) -> None:
        self.path = path
        self.lines = lines

    def fail(self, keys: KeyPath, message: str) -> ConfigFileError:
        line = None
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.lines:
                line = self.lines[keys[:n]]
                break
        dotted = ""
        for k in keys:
            dotted += f"[{k}]" if isinstance(k, int) else (f".{k}" if dotted else str(k))
        return ConfigFileError(self.path, message, line=line, key=dotted or None)

    def route(self, i: int, route: RouteConfig, config: GatewayConfig, base: Path) -> RouteConfig:
        here: KeyPath = ("routes", i)
        if route.upstream not in config.upstreams:
            known = ", ".join(sorted(config.upstreams)) or "none"
            raise self.fail(
                (*here, "upstream"), f"unknown upstream '{route.upstream}' (known: {known})"
            )
        for j, tenant in enumerate(route.tenants or []):
            if tenant not in config.auth.tenants:
                raise self.fail(
                    (*here, "tenants", j), f"unknown tenant '{tenant}' (not in auth.tenants)"
                )
        prefix = route.path_prefix.rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise self.fail((*here, "path_prefix"), "must start with '/'")
        upstream = config.upstreams[route.upstream]
        if upstream.type != "openai" and any(r != "deny" for r in (route.endpoints or {}).values()):
            raise self.fail(
                (*here, "endpoints"),
                f"upstream '{route.upstream}' is {upstream.type}: it serves chat only, "
                "so other endpoints can only be 'deny'",
            )
        policy = _resolve(base, route.policy)
        if not policy.is_file():
            raise self.fail((*here, "policy"), f"policy file not found: {policy}")
        return route.model_copy(update={"policy": str(policy), "path_prefix": prefix})

    def unique_route_names(self, routes: list[RouteConfig]) -> None:
        seen: set[str] = set()
        for i, route in enumerate(routes):
            if route.name in seen:
                raise self.fail(("routes", i, "name"), f"duplicate route name '{route.name}'")
            seen.add(route.name)

    def default_guard(self, config: GatewayConfig) -> None:
        if config.default_guard not in config.guards:
            known = ", ".join(sorted(config.guards)) or "none"
            raise self.fail(
                ("default_guard",), f"unknown guard '{config.default_guard}' (known: {known})"
            )

    def cascade(
        self, name: str, guard: GuardConfig, config: GatewayConfig, base: Path
    ) -> GuardConfig:
        """A cascade names a model guard of this config and a head file that loads; its
        `head` comes back absolute."""
        if not isinstance(guard, CascadeGuardConfig):
            return guard
        here: KeyPath = ("guards", name)
        model_guard = config.guards.get(guard.guard)
        if model_guard is None:
            known = ", ".join(sorted(config.guards)) or "none"
            raise self.fail((*here, "guard"), f"unknown guard '{guard.guard}' (known: {known})")
        if not isinstance(model_guard, SGLangGuardConfig):
            raise self.fail(
                (*here, "guard"),
                f"guard '{guard.guard}' is {model_guard.type}: a cascade needs a model guard "
                "(type: sglang) to answer what its head cannot",
            )
        head = _resolve(base, guard.head)
        try:
            load_distilled(head)
        except Exception as exc:  # missing, unreadable, not a zip, not a head: all "no"
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self.fail((*here, "head"), f"head file {head} does not load: {detail}") from None
        return guard.model_copy(update={"head": str(head)})

    def limit_tenants(self, config: GatewayConfig) -> None:
        routes = {route.name for route in config.routes}
        for name, spec in config.limits.routes.items():
            if name not in routes:
                raise self.fail(("limits", "routes", name), f"unknown route '{name}'")
            if spec.guard_checks_per_minute is not None:
                raise self.fail(
                    ("limits", "routes", name, "guard_checks_per_minute"),
                    "guard checks are limited per tenant only (limits.default / limits.tenants)",
                )
        for name in config.limits.tenants:
            if name not in config.auth.tenants:
                raise self.fail(
                    ("limits", "tenants", name), f"unknown tenant '{name}' (not in auth.tenants)"
                )

    def one_audit_store(self, config: GatewayConfig) -> None:
        # `path` has a default, so only a path written in the file conflicts with a URL.
        if config.audit.url and "path" in config.audit.model_fields_set:
            raise self.fail(
                ("audit", "url"),
                "audit.url and audit.path are both set: choose one store "
                "(url: PostgreSQL, shared by replicas; path: an SQLite file)",
            )

    def tenant_keys(self, tenants: Mapping[str, TenantConfig]) -> None:
        # A key shared by two tenants would make the tenant depend on dictionary order.
        owner: dict[str, str] = {}
        for name, tenant in tenants.items():
            for j, key in enumerate(tenant.keys):
                if not key:
                    continue
                if key.startswith("sha256:"):
                    hexdigest = key.removeprefix("sha256:")
                    if not _SHA256_HEX.fullmatch(hexdigest):
                        raise self.fail(
                            ("auth", "tenants", name, "keys", j),
                            "sha256: key must be followed by 64 hex digits",
                        )
                    digest = hexdigest.lower()
                else:
                    digest = hashlib.sha256(key.encode()).hexdigest()
                other = owner.setdefault(digest, name)
                if other != name:
                    raise self.fail(
                        ("auth", "tenants", name, "keys", j),
                        f"key is also a key of tenant '{other}'",
                    )
