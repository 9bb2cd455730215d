"""Tenant authentication: `Authorization: Bearer <key>` -> tenant name.

Keys are held only as SHA-256 digests (config may store them as `sha256:<hex>` so the
plain key never sits in a file). A presented key is hashed and compared with every
stored digest using `hmac.compare_digest`, without stopping at the first match, so the
time taken reveals neither whether a key is close nor which tenant it belongs to.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from proxy.config_schema import TenantConfig
from proxy.errors import Unauthorized

_MISSING = (
    "Missing bearer token. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_INCORRECT = "Incorrect API key provided."


def key_digest(key: str) -> bytes:
    """The stored form of a configured key: `sha256:<hex>` decoded, or a plain key hashed."""
    if key.startswith("sha256:"):
        hexdigest = key.removeprefix("sha256:")
        digest = bytes.fromhex(hexdigest)  # ValueError on non-hex; load_config checks first
        if len(digest) != 32:
            raise ValueError("sha256: key must be followed by 64 hex digits")
        return digest
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Maps bearer tokens to tenant names; open (no checks) when no tenants are configured."""

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._open = not tenants
        # Empty keys are skipped: an unset `${KEY:-}` must not admit an empty bearer token.
        self._keys: tuple[tuple[bytes, str], ...] = tuple(
            (key_digest(key), name)
            for name, tenant in tenants.items()
            for key in tenant.keys
            if key
        )

    @property
    def open(self) -> bool:
        return self._open

    def authenticate(self, authorization: str | None) -> str | None:
        """The tenant for an Authorization header; None in open mode. Raises Unauthorized."""
        if self._open:
            return None
        token = _bearer(authorization)
        if not token:
            raise Unauthorized(_MISSING)
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for digest, name in self._keys:
            # No early exit: every stored key is compared, whatever matched before.
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            raise Unauthorized(_INCORRECT)
        return found


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
