"""The app factory: `create_app(config)` -> a Starlette app serving the OpenAI-compatible API.

Routes are fixed at start-up from the configured path prefixes. Clients (one pooled httpx
client per upstream) are built in the lifespan, on the serving event loop, and kept in one
`GatewayState` at `app.state.gateway`; shutdown closes them.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from guard_engine.engine import GuardEngine
from proxy.admin import AdminGate
from proxy.auth import Authenticator
from proxy.client_headers import HeaderAllowList
from proxy.config_schema import GatewayConfig, LiteLLMUpstreamConfig, OpenAIUpstreamConfig
from proxy.errors import GatewayError, MethodNotAllowed, NotFound
from proxy.forward import forward_chat
from proxy.handlers.chat import chat_completions
from proxy.handlers.completions import create_completion
from proxy.handlers.health import healthz, readyz
from proxy.handlers.models import list_models
from proxy.handlers.moderations import create_moderation
from proxy.handlers.passthrough import passthrough
from proxy.handlers.responses import create_response
from proxy.middleware import GatewayMiddleware
from proxy.routing import Router
from proxy.state import GatewayState, ReadinessProbe
from proxy.upstream_errors import SecretRedactor, configured_secrets
from proxy.upstreams.openai_upstream import OpenAIUpstream
from proxy.upstreams.reply import ChatUpstream

if TYPE_CHECKING:
    from proxy.observability.setup import Observability

CONFIG_ENV = "GUARDLINE_CONFIG"


def build_upstreams(
    config: GatewayConfig,
    *,
    byok: bool,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> dict[str, ChatUpstream]:
    """One client per configured upstream; litellm is imported only if one is configured."""
    transports = transports or {}
    out: dict[str, ChatUpstream] = {}
    for name, cfg in config.upstreams.items():
        if isinstance(cfg, LiteLLMUpstreamConfig):
            from proxy.upstreams.litellm_chat import LiteLLMChat
            from proxy.upstreams.litellm_upstream import LiteLLMUpstream

            out[name] = LiteLLMChat(LiteLLMUpstream(name, cfg), byok=byok)
        else:
            out[name] = OpenAIUpstream(name, cfg, byok=byok, transport=transports.get(name))
    return out


def _config_probe(config: GatewayConfig) -> ReadinessProbe:
    detail = {
        "config": {
            "routes": [r.name for r in config.routes],
            "tenants": len(config.auth.tenants),
        },
        "upstreams": {name: cfg.type for name, cfg in config.upstreams.items()},
    }

    async def config_loaded() -> tuple[bool, dict[str, Any]]:
        return bool(config.upstreams) and bool(config.routes), detail

    return config_loaded


def header_allow_lists(config: GatewayConfig) -> dict[str, HeaderAllowList]:
    """Allow-lists for the routes whose upstream is called with the operator's key."""
    out: dict[str, HeaderAllowList] = {}
    for route in config.routes:
        upstream = config.upstreams[route.upstream]
        if isinstance(upstream, OpenAIUpstreamConfig) and upstream.api_key:
            out[route.name] = HeaderAllowList(route.forward_headers)
    return out


def build_state(
    config: GatewayConfig,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> GatewayState:
    authenticator = Authenticator(config.auth.tenants)
    return GatewayState(
        config=config,
        authenticator=authenticator,
        router=Router(config.routes, config.upstreams),
        upstreams=build_upstreams(config, byok=authenticator.open, transports=transports),
        chat_service=forward_chat,
        header_allow_lists=header_allow_lists(config),
        redactor=SecretRedactor(configured_secrets(config)),
        admin=AdminGate(config.server.admin_key),
        readiness=[_config_probe(config)],
        started_at=int(time.time()),
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong method) in the OpenAI envelope."""
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}.",
            headers={"allow": allow} if allow else None,
        )
    elif exc.status_code == 404:
        error = NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    else:
        error = GatewayError(exc.detail)
        error.status = exc.status_code
    return Response(
        error.body(), status_code=error.status, headers=error.headers, media_type="application/json"
    )


_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # (HEAD comes with GET)


def _routes(config: GatewayConfig) -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    prefixes = dict.fromkeys(["", *(r.path_prefix.rstrip("/") for r in config.routes)])
    for prefix in prefixes:
        routes.append(Route(f"{prefix}/v1/chat/completions", chat_completions, methods=["POST"]))
        routes.append(Route(f"{prefix}/v1/models", list_models, methods=["GET"]))
        routes.append(Route(f"{prefix}/v1/moderations", create_moderation, methods=["POST"]))
        routes.append(Route(f"{prefix}/v1/responses", create_response, methods=["POST"]))
        routes.append(Route(f"{prefix}/v1/completions", create_completion, methods=["POST"]))
    # Every other /v1/ endpoint, after all explicit routes: relayed by the route's endpoint rule.
    for prefix in prefixes:
        routes.append(Route(f"{prefix}/v1/{{path:path}}", passthrough, methods=_ANY_METHOD))
    return routes


def create_app(
    config: GatewayConfig,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    moderation: bool = False,
    engine: GuardEngine | None = None,
    freeze_gc: bool = False,
    observability: Observability | None = None,
) -> Starlette:
    """The gateway app. `transports` (upstream name -> httpx transport) is for tests.

    `moderation=True` installs the moderation pipeline (what `guardline serve` runs); False
    serves the bare passthrough (the gateway core's own tests); `engine` replaces the guards
    built from the config. `freeze_gc=True` (what `guardline serve` does) freezes everything
    that exists once start-up is done out of the garbage collector's reach.

    Observability (logs, traces, metrics at /metrics, audit) is built from the config's
    switches when moderation is on; `observability` passes a prebuilt one (tests inject an
    in-memory span processor and a log stream through `build_observability`).
    """
    obs = observability
    if obs is None and moderation:
        from proxy.observability.setup import build_observability

        obs = build_observability(config)
    before_scrape: list[Callable[[], None]] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = build_state(config, transports=transports)
        app.state.gateway = state
        try:
            from proxy.assembly import install_parts

            await install_parts(
                state,
                config,
                obs,
                moderation=moderation,
                engine=engine,
                before_scrape=before_scrape,
            )
            if freeze_gc:
                # Everything built at start-up lives as long as the process: move it out of
                # the collector's sight, so that no collection on the request path has to
                # walk the imported libraries and models (tens of ms on a small machine).
                gc.collect()
                gc.freeze()
            yield
        finally:
            await state.aclose()

    routes = _routes(config)
    middleware = [Middleware(GatewayMiddleware, max_body_bytes=config.server.max_body_bytes)]
    if obs is not None:
        from proxy import assembly

        routes.extend(assembly.routes(obs, before_scrape, AdminGate(config.server.admin_key)))
        middleware = [*assembly.middleware(obs, config), *middleware]  # outermost first
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.observability = obs
    # An API answers the path it was asked for; no redirects to a trailing-slash variant.
    app.router.redirect_slashes = False
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` (multi-worker serve): config path from GUARDLINE_CONFIG."""
    from proxy.config import load_config

    return create_app(load_config(os.environ[CONFIG_ENV]), moderation=True, freeze_gc=True)
