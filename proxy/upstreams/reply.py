"""The contract between the gateway and its upstreams.

An upstream call yields an `UpstreamReply`: the status and headers to relay and either the
complete body or an async iterator of SSE bytes. Both upstream types (`openai` passthrough and
`litellm`) produce it, so the chat service, the moderation pipeline that wraps it and the relay
that writes it to the client never care which kind of upstream answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.request_body import ChatBody

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class UpstreamReply:
    """One upstream answer. `stream` is set for an SSE stream, otherwise `body` holds it all.

    `headers` are already filtered for relaying (no hop-by-hop headers, no content-length).
    `closer` releases the upstream connection; `aclose()` is idempotent and must be awaited
    by whoever ends up owning the reply (normally the relay), also when the client is gone.
    """

    status: int
    headers: RawHeaders
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    closer: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        closer, self.closer = self.closer, None
        if closer is not None:
            await closer()


class ChatUpstream(Protocol):
    """An upstream that serves chat completions."""

    name: str

    async def chat(self, body: ChatBody, client_headers: RawHeaders) -> UpstreamReply:
        """Send one chat completion request; raises GatewayError subclasses on failure."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections (called once, in the app's lifespan shutdown)."""
        ...
