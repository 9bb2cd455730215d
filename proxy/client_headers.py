"""Which client headers reach an upstream that is called with the operator's key.

On a bring-your-own-key upstream the client talks to its own account, so its headers pass
as they are. With the operator's key, a header such as `openai-organization`,
`openai-project` or `cookie` would let a tenant choose which of the operator's organizations
or projects is billed, or replay a session, so only an allow-list passes: headers that
describe the request's format, the SDK and the trace, none that selects an account. A route
adds names of its own with `forward_headers` (e.g. a provider's feature flag).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from proxy.upstreams.reply import RawHeaders

# Format and negotiation, beta features, W3C trace context, retries without double billing,
# and the client's own identification. accept-encoding is listed for completeness: the
# openai upstream replaces it with `identity` anyway so that the output check can read the
# body.
DEFAULT_FORWARDED: Final = frozenset(
    {
        b"content-type",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"openai-beta",
        b"traceparent",
        b"tracestate",
        b"baggage",
        b"idempotency-key",
        b"user-agent",
    }
)
# The official SDKs' metadata (x-stainless-lang, -os, -arch, -retry-count, -timeout, ...):
# describes the client, steers nothing.
DEFAULT_FORWARDED_PREFIXES: Final = (b"x-stainless-",)

# Never forwardable, even by a route's opt-in: the gateway's own credentials and the headers
# the HTTP client computes itself.
NEVER_FORWARDED: Final = frozenset(
    {"authorization", "proxy-authorization", "host", "content-length", "transfer-encoding"}
)

# RFC 9110 token characters, optionally ending in `*` (a prefix).
HEADER_PATTERN: Final = re.compile(r"[A-Za-z0-9!#$%&'+.^_`|~-]+\*?")


class HeaderAllowList:
    """The default allow-list plus a route's `forward_headers` (`x-foo`, or a prefix `x-foo-*`)."""

    __slots__ = ("_names", "_prefixes")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        names = set(DEFAULT_FORWARDED)
        prefixes = list(DEFAULT_FORWARDED_PREFIXES)
        for entry in extra:
            name = entry.lower().encode("ascii")
            if name.endswith(b"*"):
                prefixes.append(name[:-1])
            else:
                names.add(name)
        self._names = frozenset(names)
        self._prefixes = tuple(prefixes)

    def allows(self, name: bytes) -> bool:
        """`name` must be lower-case (ASGI header names are)."""
        return name in self._names or name.startswith(self._prefixes)

    def filter(self, headers: RawHeaders) -> RawHeaders:
        return [(k, v) for k, v in headers if self.allows(k)]


def check_forward_header(entry: str) -> str:
    """Validate one `forward_headers` entry (config load): a header name, not a credential."""
    if not HEADER_PATTERN.fullmatch(entry):
        raise ValueError(f"'{entry}' is not a header name (letters, digits, '-', optional '*')")
    if entry.rstrip("*").lower() in NEVER_FORWARDED or (
        entry.endswith("*") and any(n.startswith(entry[:-1].lower()) for n in NEVER_FORWARDED)
    ):
        raise ValueError(f"'{entry}' is never forwarded (credentials and computed headers)")
    return entry.lower()
