"""The chat completions adapter: the pipeline's original shape, wrapping its existing parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.moderation.blocks import redact_completion, refusal_completion, refusal_stream
from proxy.moderation.extract import extract_output, uncheckable_output
from proxy.moderation.message_text import strip_choices
from proxy.request_body import ChatBody
from proxy.streaming.chunks import ResponseText
from proxy.streaming.holdback import StreamText
from proxy.streaming.strip import strip_reasoning_stream
from proxy.upstreams.reply import ChatUpstream, RawHeaders, UpstreamReply


class ChatApi:
    name = "chat"

    def param_namer(self, body: ChatBody) -> Callable[[str], str] | None:
        return None

    def output_text(self, data: dict[str, Any]) -> str:
        return extract_output(data)

    def uncheckable_output(self, data: dict[str, Any]) -> list[str]:
        return uncheckable_output(data)

    def strip_reasoning(self, data: dict[str, Any]) -> bool:
        return strip_choices(data, "message")

    def redact(self, data: dict[str, Any], refusal: str) -> bytes:
        return redact_completion(data, refusal)

    def refusal_body(self, body: ChatBody, request_id: str, refusal: str) -> bytes:
        return refusal_completion(request_id=request_id, model=body.model, refusal=refusal)

    def refusal_events(self, body: ChatBody, request_id: str, refusal: str) -> list[bytes]:
        return refusal_stream(
            request_id=request_id,
            model=body.model,
            refusal=refusal,
            include_usage=body.include_usage,
        )

    def new_stream_text(self) -> StreamText:
        return ResponseText()

    def strip_stream(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return strip_reasoning_stream(stream)

    async def send(
        self, upstream: ChatUpstream, body: ChatBody, headers: RawHeaders
    ) -> UpstreamReply:
        return await upstream.chat(body, headers)


CHAT = ChatApi()
