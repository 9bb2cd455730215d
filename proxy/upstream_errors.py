"""What an upstream's error may show a client: its body with the operator's secrets removed.

An upstream error is relayed to the client (its message is usually the most useful thing a
client can get), but some upstreams and proxies in front of them echo what they received,
including the `Authorization: Bearer <operator key>` the gateway sent. Every configured
secret (upstream and guard api keys, tenant keys, the admin key) is replaced in the error's
body, header values and message before it leaves. A 5xx body that is not an OpenAI error
envelope (an HTML page from a load balancer, plain text) is wrapped in one, status kept, so
that SDKs read a message instead of failing to parse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import orjson

from proxy.config_schema import GatewayConfig
from proxy.errors import GatewayError
from proxy.upstreams.reply import UpstreamReply

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
    """`reply` unchanged unless it is a complete error answer; then redacted (and wrapped)."""
    if reply.status < 400 or reply.stream is not None:
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


def redact_error(exc: GatewayError, redactor: SecretRedactor) -> GatewayError:
    """A gateway error built from an upstream's message (litellm) with the secrets removed."""
    if redactor:
        exc.message = redactor.redact_text(exc.message)
        exc.args = (exc.message,)
    return exc
