"""What an upstream's error may show a client: its body with the operator's secrets removed.

An upstream error is relayed to the client (its message is usually the most useful thing a
client can get), but some upstreams and proxies in front of them echo what they received,
including the `Authorization: Bearer <operator key>` the gateway sent. Every configured
secret (upstream and guard api keys, tenant keys, the admin key) is replaced in the error's
body, header values and message before it leaves. A 5xx body that is not an OpenAI error
envelope (an HTML page from a load balancer, plain text) is wrapped in one, status kept, so
that SDKs read a message instead of failing to parse.

A stream can fail after its 200 too: providers then send an error event (`data: {"error":
...}`, `event: error`, a Responses API `response.failed`), which can echo the same secrets. The
events of an upstream SSE stream are therefore cut at their boundaries (a secret split across
network chunks is still found) and any event that mentions an error is redacted the same way;
every other event passes byte for byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import orjson

from proxy.config_schema import GatewayConfig
from proxy.errors import GatewayError
from proxy.sse import SSEEvent, SSEParser
from proxy.upstreams.reply import RawHeaders, UpstreamReply

REDACTED: Final = b"[redacted]"
# How much of a non-JSON 5xx body is kept in the wrapping envelope's message.
EXCERPT_CHARS: Final = 300


class SecretRedactor:
    """Replaces every occurrence of the given secrets, raw or JSON-escaped, in bytes or text."""

    __slots__ = ("_forms",)

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[bytes] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret.encode())
            forms.add(orjson.dumps(secret)[1:-1])  # as it appears inside a JSON string
        # Longest first: a secret that contains another is replaced whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def redact(self, data: bytes) -> bytes:
        for form in self._forms:
            if form in data:
                data = data.replace(form, REDACTED)
        return data

    def redact_text(self, text: str) -> str:
        return self.redact(text.encode()).decode("utf-8", "replace")


def configured_secrets(config: GatewayConfig) -> list[str]:
    """Every secret the config holds in plain text (sha256: tenant keys are not secrets)."""
    out: list[str] = [config.server.admin_key]
    out.extend(u.api_key for u in config.upstreams.values())
    out.extend(getattr(g, "api_key", None) or "" for g in config.guards.values())
    for tenant in config.auth.tenants.values():
        out.extend(k for k in tenant.keys if not k.startswith("sha256:"))
    return [s for s in out if s]


def _is_envelope(body: bytes) -> bool:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


def _wrapped(status: int, upstream: str, body: bytes) -> bytes:
    excerpt = " ".join(body.decode("utf-8", "replace").split())[:EXCERPT_CHARS]
    message = f"Upstream '{upstream}' answered {status} without an OpenAI error body"
    message += f": {excerpt}" if excerpt else "."
    error = {"message": message, "type": "upstream_error", "param": None, "code": "upstream_error"}
    return orjson.dumps({"error": error})


def sanitize_error_reply(
    reply: UpstreamReply, redactor: SecretRedactor, upstream: str
) -> UpstreamReply:
    """`reply` unchanged unless it is a complete error answer, then redacted (and wrapped), or
    an event stream, whose error events are then redacted as they pass."""
    if reply.stream is not None:
        if redactor and _is_event_stream(reply.headers):
            reply.stream = RedactedErrorEvents(reply.stream, redactor)
        return reply
    if reply.status < 400:
        return reply
    body = redactor.redact(reply.body) if redactor else reply.body
    headers = [(k, redactor.redact(v)) for k, v in reply.headers] if redactor else reply.headers
    if reply.status >= 500 and not _is_envelope(body):
        body = _wrapped(reply.status, upstream, body)
        headers = [(k, v) for k, v in headers if k not in (b"content-type", b"content-encoding")]
        headers.append((b"content-type", b"application/json"))
    reply.body = body
    reply.headers = headers
    return reply


def _is_event_stream(headers: RawHeaders) -> bool:
    return any(
        k == b"content-type" and v.lower().startswith(b"text/event-stream") for k, v in headers
    )


# An event with this in its bytes may be an error event (`"error"`, `event: error`,
# `response.failed` carries `"error"` too); only such events are searched for secrets.
_ERROR_MARK: Final = b"error"


class RedactedErrorEvents:
    """An upstream SSE body passed event by event, error events with the secrets removed.

    Chunks are regrouped at event boundaries (an event split across chunks is released whole,
    when its end arrives); bytes are otherwise unchanged. If the upstream fails mid-stream,
    the bytes already received are released first and the failure is raised on the next read,
    as the unwrapped stream would have done.
    """

    __slots__ = ("_ended", "_failure", "_inner", "_parser", "_redactor")

    def __init__(self, inner: AsyncIterator[bytes], redactor: SecretRedactor) -> None:
        self._inner = inner
        self._redactor = redactor
        self._parser = SSEParser()
        self._failure: Exception | None = None
        self._ended = False

    def __aiter__(self) -> RedactedErrorEvents:
        return self

    async def __anext__(self) -> bytes:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        while not self._ended:
            try:
                chunk = await self._inner.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            except Exception as exc:
                self._ended = True
                tail = self._parser.flush()
                if not tail:
                    raise
                self._failure = exc
                return self._join(tail)
            events = self._parser.feed(chunk)
            if events:
                return self._join(events)
        tail = self._parser.flush()
        if tail:
            return self._join(tail)
        raise StopAsyncIteration

    def _join(self, events: list[SSEEvent]) -> bytes:
        redact = self._redactor.redact
        return b"".join(
            redact(event.raw) if _ERROR_MARK in event.raw else event.raw for event in events
        )

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def redact_error(exc: GatewayError, redactor: SecretRedactor) -> GatewayError:
    """A gateway error built from an upstream's message (litellm) with the secrets removed."""
    if redactor:
        exc.message = redactor.redact_text(exc.message)
        exc.args = (exc.message,)
    return exc
