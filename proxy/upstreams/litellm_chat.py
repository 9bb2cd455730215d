"""Adapts a `type: litellm` upstream (which speaks Python dicts) to the gateway's reply contract.

Completions are serialized with orjson; streams become SSE `data:` events ending with
`data: [DONE]`, exactly the framing an OpenAI upstream sends. litellm itself is imported
lazily by `proxy.upstreams.litellm_upstream`, which also translates its exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from proxy.errors import GatewayError, InternalError
from proxy.request_body import ChatBody
from proxy.upstreams.openai_upstream import error_event
from proxy.upstreams.reply import RawHeaders, UpstreamReply

if TYPE_CHECKING:
    from proxy.upstreams.litellm_upstream import LiteLLMUpstream

log = logging.getLogger("guardline.upstream")

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"


class LiteLLMChat:
    """A LiteLLMUpstream behind the ChatUpstream protocol."""

    def __init__(self, upstream: LiteLLMUpstream, *, byok: bool) -> None:
        self.name: str = upstream.name
        self._upstream = upstream
        # As for openai upstreams: the client's own key is used only on an open gateway,
        # never a tenant's gateway key.
        self._byok = byok

    def _client_key(self, client_headers: RawHeaders) -> str | None:
        if not self._byok:
            return None
        for name, value in client_headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip()
        return None

    async def chat(self, body: ChatBody, client_headers: RawHeaders) -> UpstreamReply:
        api_key = self._client_key(client_headers)
        if not body.stream:
            result = await self._upstream.complete(body.data, api_key=api_key)
            return UpstreamReply(200, list(_JSON), body=orjson.dumps(result))
        chunks = aiter(self._upstream.stream(body.data, api_key=api_key))
        # The first chunk is awaited here so that a provider error at the start (bad key,
        # unknown model) is an HTTP error status, not an error event in a 200 stream.
        try:
            first: dict[str, Any] | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        return UpstreamReply(
            200, list(_SSE), stream=self._sse(first, chunks), closer=_closer(chunks)
        )

    async def _sse(
        self, first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield b"data: " + orjson.dumps(first) + b"\n\n"
            async for chunk in chunks:
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        except GatewayError as exc:
            yield error_event(exc)
            return
        except Exception:
            log.exception("litellm upstream %s stream failed", self.name)
            yield error_event(InternalError("The upstream stream failed."))
            return
        yield _DONE

    async def aclose(self) -> None:
        await self._upstream.aclose()


def _closer(chunks: AsyncIterator[dict[str, Any]]) -> Any:
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:

        async def noop() -> None:
            return None

        return noop
    return aclose
