"""The gateway's one explicit state object, built in the app's lifespan.

Everything a request needs that outlives it (config, authenticator, router, pooled upstream
clients, readiness probes, the chat service, the background tasks) lives here and is passed
explicitly; there is no module-level mutable state. Later components (guards, policies,
telemetry) add their probes to `readiness` and their shutdown hooks to `closers`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection

from proxy.admin import AdminGate
from proxy.auth import Authenticator
from proxy.background import BackgroundTasks
from proxy.chat_call import ChatCall
from proxy.client_headers import HeaderAllowList
from proxy.config_schema import GatewayConfig
from proxy.routing import Router
from proxy.upstream_errors import SecretRedactor
from proxy.upstreams.reply import ChatUpstream, UpstreamReply

log = logging.getLogger("guardline.state")

# The chat service: one routed chat request -> the upstream's reply. `proxy.forward.forward_chat`
# (the upstream call itself) unless something (the moderation pipeline, the limits) wraps it.
ChatService = Callable[["GatewayState", ChatCall], Awaitable[UpstreamReply]]

# A readiness probe answers (ready, detail); `detail` is merged into /readyz's `checks`.
ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


@dataclass(slots=True)
class GatewayState:
    config: GatewayConfig
    authenticator: Authenticator
    router: Router
    upstreams: dict[str, ChatUpstream]
    chat_service: ChatService
    # Route name -> the client headers its upstream may receive; only routes whose upstream
    # is called with the operator's key are listed (the others forward the client's headers).
    header_allow_lists: dict[str, HeaderAllowList] = field(default_factory=dict)
    # Who may read /metrics and /readyz's details (everyone unless server.admin_key is set).
    admin: AdminGate = field(default_factory=lambda: AdminGate(""))
    # Removes the config's secrets from upstream errors before a client sees them.
    redactor: SecretRedactor = field(default_factory=lambda: SecretRedactor(()))
    readiness: list[ReadinessProbe] = field(default_factory=list)
    # Work started by requests that outlives them (shadow checks, monitor-mode settling, THINK
    # re-checks): drained or cancelled first at shutdown, while what it uses is still open.
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    # Run in reverse order at shutdown, after the upstream clients are closed.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    started_at: int = 0
    # The moderation pipeline (proxy.moderation.pipeline.ModerationPipeline) when installed;
    # typed loosely to keep this module free of guard imports.
    moderation: Any = None

    async def aclose(self) -> None:
        """Background work first (bounded by `server.graceful_shutdown_s`, then cancelled),
        then the upstream clients, then the closers (guard engine, audit writer, exporters)."""
        try:
            await self.background.aclose(self.config.server.graceful_shutdown_s)
        except Exception:
            log.exception("ending background work failed")
        for upstream in self.upstreams.values():
            try:
                await upstream.aclose()
            except Exception:
                log.exception("closing upstream %s failed", upstream.name)
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                log.exception("shutdown hook failed")


def get_state(conn: HTTPConnection) -> GatewayState:
    """The state of the app serving this request (set by the lifespan)."""
    state: GatewayState = conn.app.state.gateway
    return state
