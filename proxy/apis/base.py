"""The API adapter interface: what the moderation pipeline asks of an API shape.

The pipeline (`proxy.moderation.pipeline`) checks input, calls the upstream and checks output
the same way for every API; an adapter translates between that and one API's wire format:

- input: the request parsed into chat-shaped `messages` (a `ChatBody`), so one extractor
  (`proxy.moderation.extract.extract_input`) applies the same scope rules to every API, and
  `param` names translated back into the API's own (`input[2].content[0]`);
- output: the text of a complete body, and a `StreamText` reader of the API's stream events;
- blocks: the refusal as a complete body or as stream events, a body with its output replaced;
- the upstream call (which path of the upstream serves the API).

`proxy.apis.chat.CHAT` is the chat completions adapter, `proxy.apis.responses.RESPONSES` the
Responses API's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from proxy.errors import NotFound
from proxy.request_body import ChatBody
from proxy.streaming.holdback import StreamText
from proxy.upstreams.reply import ChatUpstream, RawHeaders, UpstreamReply


class ApiAdapter(Protocol):
    name: str

    def param_namer(self, body: ChatBody) -> Callable[[str], str] | None:
        """Translates `messages[i]...` params into the API's own names (None: unchanged)."""
        ...

    def output_text(self, data: dict[str, Any]) -> str:
        """All output text of a complete answer, as the guard judges it."""
        ...

    def uncheckable_output(self, data: dict[str, Any]) -> list[str]:
        """Paths of output parts nobody can read as text."""
        ...

    def strip_reasoning(self, data: dict[str, Any]) -> bool:
        """Removes reasoning from a complete answer in place; True if something was removed."""
        ...

    def redact(self, data: dict[str, Any], refusal: str) -> bytes:
        """The answer with its output replaced by the refusal (output blocked)."""
        ...

    def refusal_body(self, body: ChatBody, request_id: str, refusal: str) -> bytes:
        """A complete answer that refuses (input blocked, `on_block.input: refusal`)."""
        ...

    def refusal_events(self, body: ChatBody, request_id: str, refusal: str) -> list[bytes]:
        """The same as a stream's SSE events."""
        ...

    def new_stream_text(self) -> StreamText:
        """A reader for one streamed answer's events."""
        ...

    def strip_stream(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A stream without reasoning (`output.reasoning: strip`, output not checked)."""
        ...

    async def send(
        self, upstream: ChatUpstream, body: ChatBody, headers: RawHeaders
    ) -> UpstreamReply:
        """Calls the upstream's endpoint for this API."""
        ...


async def send_to(
    upstream: ChatUpstream, method: str, what: str, body: ChatBody, headers: RawHeaders
) -> UpstreamReply:
    """Calls the upstream's `method` (e.g. `responses`); an upstream type that does not serve
    that API (litellm) is a 404 `unsupported_endpoint`. `what` starts the message
    ("The Responses API is")."""
    call = getattr(upstream, method, None)
    if call is None:
        raise NotFound(
            f"{what} not served by upstream '{upstream.name}' "
            "(only `type: openai` upstreams serve it).",
            code="unsupported_endpoint",
        )
    reply: UpstreamReply = await call(body, headers)
    return reply
