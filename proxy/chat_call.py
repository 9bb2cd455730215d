"""`ChatCall`: one chat request once it is authenticated and routed, as the chat service
(`GatewayState.chat_service`: the upstream call, or the moderation pipeline around it) gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.config_schema import RouteConfig
from proxy.request_body import ChatBody
from proxy.upstreams.reply import RawHeaders

if TYPE_CHECKING:
    from proxy.apis.base import ApiAdapter
    from proxy.context import RequestContext


@dataclass(slots=True)
class ChatCall:
    """Everything known about one chat request once it is authenticated and routed."""

    tenant: str | None
    route: RouteConfig
    body: ChatBody
    headers: RawHeaders  # the client's request headers, names lower-case (ASGI)
    request_id: str
    # The request's context (proxy.context): its start time, so that the timing ledger
    # covers body reading, auth and routing too, and where the moderation summary and the
    # work deferred until the response is out are left. None outside an HTTP request.
    context: RequestContext | None = None
    # The API shape (proxy.apis): None is chat completions; the Responses API sets its own.
    api: ApiAdapter | None = None
