"""Route matching: (path prefix, tenant, model) -> the first configured route that accepts it.

Routes are tried in config order and the first match wins, so operators write specific
routes first and a catch-all last. A route's model filter and its upstream's model list
both apply: a route cannot send a model to an upstream that does not offer it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxy.config_schema import LiteLLMUpstreamConfig, RouteConfig, UpstreamConfig
from proxy.errors import ModelNotFound


def model_allowed(patterns: Sequence[str], model: str) -> bool:
    """True when `model` equals a pattern or starts with a pattern's text before a final `*`."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if model.startswith(pattern[:-1]):
                return True
        elif model == pattern:
            return True
    return False


def _normalize(prefix: str) -> str:
    return prefix.rstrip("/")


class Router:
    """Immutable routing table built once from config."""

    def __init__(
        self, routes: Sequence[RouteConfig], upstreams: Mapping[str, UpstreamConfig]
    ) -> None:
        self._routes = tuple(routes)
        self._upstreams = dict(upstreams)
        prefixes = {_normalize(r.path_prefix) for r in self._routes} - {""}
        # Longest first, so /kids/teens wins over /kids.
        self._prefixes = tuple(sorted(prefixes, key=len, reverse=True))

    @property
    def routes(self) -> tuple[RouteConfig, ...]:
        return self._routes

    def split_path(self, path: str) -> tuple[str, str]:
        """ "/kids/v1/chat/completions" -> ("/kids", "/v1/chat/completions"); else ("", path)."""
        for prefix in self._prefixes:
            if path == prefix:
                return prefix, "/"
            if path.startswith(prefix) and path[len(prefix)] == "/":
                return prefix, path[len(prefix) :]
        return "", path

    def match(self, prefix: str, tenant: str | None, model: str | None) -> RouteConfig:
        """The first route for this prefix, tenant and model; ModelNotFound when none."""
        prefix = _normalize(prefix)
        for route in self._routes:
            if self._accepts(route, prefix, tenant, model):
                return route
        if model is None:
            raise ModelNotFound("No route serves this request.")
        # Same wording (and param null) as OpenAI's own model_not_found error.
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.")

    def models_for(self, prefix: str, tenant: str | None) -> list[str]:
        """Model ids the caller's routes offer, de-duplicated, in route order."""
        prefix = _normalize(prefix)
        out: dict[str, None] = {}
        for route in self._routes:
            if not self._accepts(route, prefix, tenant, None):
                continue
            upstream_models = self._upstream_models(route.upstream)
            for model in route.models or []:
                if model.endswith("*"):
                    continue
                if not upstream_models or model_allowed(upstream_models, model):
                    out.setdefault(model, None)
            for model in self._offered(route.upstream):
                if route.models is None or model_allowed(route.models, model):
                    out.setdefault(model, None)
        return list(out)

    def _accepts(
        self, route: RouteConfig, prefix: str, tenant: str | None, model: str | None
    ) -> bool:
        if _normalize(route.path_prefix) != prefix:
            return False
        if route.tenants is not None and (tenant is None or tenant not in route.tenants):
            return False
        if model is None:
            return True
        if route.models is not None and not model_allowed(route.models, model):
            return False
        upstream_models = self._upstream_models(route.upstream)
        return not upstream_models or model_allowed(upstream_models, model)

    def _upstream_models(self, name: str) -> list[str]:
        """The upstream's explicit `models` filter; empty means it accepts any model."""
        upstream = self._upstreams.get(name)
        if upstream is None or not upstream.models:
            return []
        if isinstance(upstream, LiteLLMUpstreamConfig):
            return list(upstream.models)
        # Alias names are client-facing too: a listed upstream also accepts its aliases.
        return [*upstream.models, *upstream.model_alias]

    def _offered(self, name: str) -> list[str]:
        """What the upstream advertises in /v1/models (no wildcards)."""
        upstream = self._upstreams.get(name)
        if upstream is None:
            return []
        if isinstance(upstream, LiteLLMUpstreamConfig):
            names = upstream.models or [upstream.model]
        else:
            names = [*upstream.models, *upstream.model_alias]
        return [n for n in names if not n.endswith("*")]
