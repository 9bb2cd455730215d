"""`type: openai` upstreams: a byte-faithful httpx passthrough.

The client's body bytes and headers go out unchanged (except hop-by-hop headers and the
credentials), the upstream's status, headers and bytes come back unchanged. httpx's exceptions
are translated here and nowhere else: connect errors are 502, timeouts 504, and a stream that
breaks after it started ends with one SSE error event instead of a hang.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import AsyncIterator

import httpx
import orjson

from proxy.config_schema import OpenAIUpstreamConfig
from proxy.errors import GatewayError, UpstreamError, UpstreamTimeout
from proxy.request_body import ChatBody
from proxy.upstreams.h1_transport import H1Transport
from proxy.upstreams.reply import RawHeaders, UpstreamReply

log = logging.getLogger("guardline.upstream")

# Never forwarded upstream: hop-by-hop headers, headers httpx computes itself, and the
# credentials (replaced by the upstream's key, or passed on explicitly in BYOK mode).
# accept-encoding is replaced by `identity` so that the moderation pipeline can read the
# upstream's bytes without decompressing them.
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"authorization",
        b"accept-encoding",
        b"expect",
    }
)

# Never relayed to the client: hop-by-hop headers and content-length (the server computes
# it for the bytes actually sent).
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

_EVENT_END = (b"\n\n", b"\r\n\r\n", b"\r\r")


def relay_headers(raw: list[tuple[bytes, bytes]]) -> RawHeaders:
    """The upstream's response headers minus the ones a proxy must not copy."""
    return [(k.lower(), v) for k, v in raw if k.lower() not in _RESPONSE_DROP]


def error_event(exc: GatewayError) -> bytes:
    """One SSE event carrying an OpenAI error envelope (what OpenAI sends mid-stream)."""
    return b"data: " + orjson.dumps(exc.envelope()) + b"\n\n"


def _last_event_end(buf: bytes) -> int:
    """Index just past the last complete SSE event in `buf`, or 0."""
    end = 0
    for sep in _EVENT_END:
        i = buf.rfind(sep)
        if i >= 0:
            end = max(end, i + len(sep))
    return end


def env_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment (HTTPS_PROXY, NO_PROXY, ...) sets for this URL, if any: then
    httpx's own transport, which implements proxies, is used instead of H1Transport."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy


def translate(exc: httpx.HTTPError, upstream: str) -> GatewayError:
    """httpx's exceptions -> the gateway's (the one boundary for this library)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"Upstream '{upstream}' timed out ({type(exc).__name__}).")
    return UpstreamError(f"Upstream '{upstream}' is unreachable ({type(exc).__name__}).")


class OpenAIUpstream:
    """One OpenAI-compatible upstream with its own pooled client.

    `byok`: with no api_key configured, forward the client's Authorization header (only
    sensible when the gateway has no tenants, whose keys must never leak upstream).
    """

    def __init__(
        self,
        name: str,
        cfg: OpenAIUpstreamConfig,
        *,
        byok: bool,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._alias = dict(cfg.model_alias)
        self._url = httpx.URL(cfg.base_url.rstrip("/") + "/chat/completions")
        self._models_url = httpx.URL(cfg.base_url.rstrip("/") + "/models")
        self._responses_url = httpx.URL(cfg.base_url.rstrip("/") + "/responses")
        self._completions_url = httpx.URL(cfg.base_url.rstrip("/") + "/completions")
        # No `models` list: the upstream serves whatever it has, and /v1/models asks it.
        self.offers_any_model = not cfg.models
        self._auth: bytes | None = f"Bearer {cfg.api_key}".encode() if cfg.api_key else None
        self._byok = byok and not cfg.api_key
        # Called with the operator's key: client headers must be cut to an allow-list.
        self.uses_operator_key = bool(cfg.api_key)
        self._timeouts = httpx.Timeout(
            connect=cfg.connect_timeout_s,
            read=cfg.read_timeout_s,
            write=cfg.read_timeout_s,
            pool=cfg.connect_timeout_s,
        ).as_dict()
        if transport is None:
            proxy = env_proxy(self._url)
            if proxy is None:
                transport = H1Transport(max_connections=cfg.max_connections)
            else:
                limits = httpx.Limits(
                    max_connections=cfg.max_connections,
                    max_keepalive_connections=cfg.max_connections,
                )
                transport = httpx.AsyncHTTPTransport(proxy=proxy, limits=limits)
        # The transport is used directly, without httpx.AsyncClient: a proxy must not keep a
        # cookie jar shared by all its clients, follow redirects or add headers of its own,
        # and the client layer's bookkeeping is pure per-request overhead here.
        self._transport = transport

    def _headers(self, client_headers: RawHeaders) -> RawHeaders:
        out = [(k, v) for k, v in client_headers if k not in _REQUEST_DROP]
        out.append((b"accept-encoding", b"identity"))
        if self._auth is not None:
            out.append((b"authorization", self._auth))
        elif self._byok:
            out.extend((k, v) for k, v in client_headers if k == b"authorization")
        return out

    async def chat(self, body: ChatBody, client_headers: RawHeaders) -> UpstreamReply:
        return await self._post(self._url, body, client_headers)

    async def responses(self, body: ChatBody, client_headers: RawHeaders) -> UpstreamReply:
        """`POST {base_url}/responses` (the Responses API), relayed like a chat completion."""
        return await self._post(self._responses_url, body, client_headers)

    async def completions(self, body: ChatBody, client_headers: RawHeaders) -> UpstreamReply:
        """`POST {base_url}/completions` (legacy completions), relayed like a chat completion."""
        return await self._post(self._completions_url, body, client_headers)

    async def _post(
        self, url: httpx.URL, body: ChatBody, client_headers: RawHeaders
    ) -> UpstreamReply:
        alias = self._alias.get(body.model)
        content = body.raw if alias is None else body.with_model(alias)
        request = httpx.Request(
            "POST",
            url,
            content=content,
            headers=self._headers(client_headers),
            extensions={"timeout": self._timeouts},
        )
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise translate(exc, self.name) from None
        response.request = request
        headers = relay_headers(response.headers.raw)
        # One pass over the raw list: httpx.Headers lookups re-decode every header each time.
        ctype = b""
        encoded = False
        for name, value in headers:
            if name == b"content-type":
                ctype = value
            elif name == b"content-encoding":
                encoded = True
        if ctype.startswith(b"text/event-stream"):
            return UpstreamReply(
                response.status_code,
                headers,
                stream=self._relay(response, aligned=not encoded),
                closer=response.aclose,
            )
        try:
            # Decoded bytes (identity was asked for, so normally exactly the bytes sent); a
            # content-encoding the upstream applied anyway has been undone, so it is dropped.
            data = await response.aread()
        except httpx.HTTPError as exc:
            raise translate(exc, self.name) from None
        finally:
            await response.aclose()
        if encoded:
            headers = [(k, v) for k, v in headers if k != b"content-encoding"]
        return UpstreamReply(response.status_code, headers, body=data)

    async def list_models(self, client_headers: RawHeaders) -> UpstreamReply:
        """`GET {base_url}/models` with the same credentials a chat request would carry."""
        headers = [(k, v) for k, v in self._headers(client_headers) if k not in (b"content-type",)]
        request = httpx.Request(
            "GET", self._models_url, headers=headers, extensions={"timeout": self._timeouts}
        )
        try:
            response = await self._transport.handle_async_request(request)
            try:
                data = await response.aread()
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise translate(exc, self.name) from None
        return UpstreamReply(response.status_code, relay_headers(response.headers.raw), body=data)

    async def _relay(self, response: httpx.Response, *, aligned: bool) -> AsyncIterator[bytes]:
        """The upstream's SSE bytes as they arrive, cut at event boundaries.

        Holding back a partial event (normally nothing: servers flush whole events) means a
        stream that breaks never leaves half an event in front of the error event.
        """
        pending = b""
        try:
            async for chunk in response.aiter_raw():
                if not aligned:
                    yield chunk
                    continue
                buf = pending + chunk if pending else chunk
                end = _last_event_end(buf)
                if end == len(buf):
                    pending = b""
                    yield buf
                elif end:
                    pending = buf[end:]
                    yield buf[:end]
                else:
                    pending = buf
            if pending:
                yield pending
        except httpx.HTTPError as exc:
            log.warning("upstream %s stream broke: %r", self.name, exc)
            yield error_event(translate(exc, self.name))
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()
