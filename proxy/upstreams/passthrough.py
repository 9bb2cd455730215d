"""Relaying any other `/v1/` request (embeddings, audio, images, files, ...) to an `openai`
upstream, byte for byte and without buffering.

The request goes to `{base_url}{path below /v1}?{query}` with the method, body bytes and
headers the client sent, filtered and credentialed exactly as chat requests are
(`OpenAIUpstream`'s own header rules). Two differences from chat, both for fidelity: the
client's `accept-encoding` is forwarded (the gateway never reads these answers, so a
compressed body passes through compressed), and a streamed body keeps the client's
`content-length` (or goes chunked without one). The answer comes back as it arrives: status,
headers (with the upstream's `content-length`) and raw body chunks.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from proxy.errors import GatewayError
from proxy.upstreams.openai_upstream import OpenAIUpstream, relay_headers, translate
from proxy.upstreams.reply import RawHeaders

_HOP_REQUEST = (b"accept-encoding", b"content-length", b"transfer-encoding")


@dataclass(slots=True)
class RelayedResponse:
    """An upstream answer being relayed: `chunks()` yields its raw bytes, `aclose` releases it.

    `prefetch()` reads the first body chunk ahead (while the caller still watches the client);
    `chunks()` then starts with it.
    """

    status: int
    headers: RawHeaders
    response: httpx.Response
    upstream: str
    length: int | None = None  # the upstream's content-length, when it sent one
    on_end: Callable[[], None] | None = None  # called once, when the relay is over
    first: bytes | None = None  # the prefetched chunk; None: none, or the body was empty
    _rest: AsyncIterator[bytes] | None = None

    async def _body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise translate(exc, self.upstream) from None

    async def prefetch(self) -> None:
        self._rest = self._body()
        self.first = await anext(self._rest, None)

    def chunks(self) -> AsyncIterator[bytes]:
        """The raw body chunks after the prefetched one (or all of them); a failure mid-body
        is a GatewayError (502/504)."""
        if self._rest is None:
            self._rest = self._body()
        return self._rest

    async def aclose(self) -> None:
        on_end, self.on_end = self.on_end, None
        try:
            await self.response.aclose()
        finally:
            if on_end is not None:
                on_end()


@functools.lru_cache(maxsize=1024)
def upstream_url(base_url: str, target: bytes) -> httpx.URL:
    """`target` is the raw path below `/v1` plus `?query`, as the client sent it.

    Cached (httpx.URL is immutable): parsing a URL costs ~50 µs, a tenth of the whole
    request's CPU, and most requests go to a few paths (/v1/embeddings, /v1/files)."""
    return httpx.URL(base_url.rstrip("/") + target.decode("latin-1"))


def request_headers(upstream: OpenAIUpstream, client: RawHeaders) -> RawHeaders:
    """The chat header rules, plus the client's accept-encoding and content-length."""
    # `_headers` is OpenAIUpstream's one place for what goes upstream (filtering, keys, BYOK).
    out = [(k, v) for k, v in upstream._headers(client) if k not in _HOP_REQUEST]
    out.extend((k, v) for k, v in client if k in (b"accept-encoding", b"content-length"))
    return out


async def relay(
    upstream: OpenAIUpstream,
    url: httpx.URL,
    method: str,
    headers: RawHeaders,
    content: bytes | AsyncIterator[bytes] | None,
) -> RelayedResponse:
    """Send one request; the answer's head is back when this returns, its body is not read.

    `content`: the buffered body, an async iterator streaming it, or None (no body). Raises
    GatewayError: 502 unreachable, 504 timeout, or whatever the body iterator raised (413).
    """
    request = httpx.Request(
        method,
        url,
        content=content,
        headers=headers,
        extensions={"timeout": upstream._timeouts},
    )
    try:
        response = await upstream._transport.handle_async_request(request)
    except httpx.HTTPError as exc:
        raise translate(exc, upstream.name) from None
    except GatewayError:
        raise
    response.request = request
    out = relay_headers(response.headers.raw)
    length: int | None = None
    for name, value in response.headers.raw:
        if name.lower() == b"content-length":
            try:
                length = int(value)
            except ValueError:
                break
            out.append((b"content-length", value))
            break
    return RelayedResponse(response.status_code, out, response, upstream.name, length)
