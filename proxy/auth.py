"""Tenant authentication: `Authorization: Bearer <key>` -> tenant name.

Keys are held only as SHA-256 digests (config may store them as `sha256:<hex>` so the
plain key never sits in a file). A presented key is hashed, and its digest looked up in a
dict from digest to tenant: constant time in the number of keys (docs/benchmarks.md).

Why the dict lookup leaks nothing useful through timing: the attacker controls the presented
key, not its digest. Whatever the lookup's timing depends on (the digest's hash bucket, how
many leading bytes of a colliding stored digest match before the comparison stops) is a
function of SHA-256(presented key), which the attacker can compute offline too, and which
tells nothing about any stored key: finding a presented key whose digest shares even a few
more leading bytes with a stored digest is a preimage search, and learning that it does
reveals no byte of the stored key itself (only of its digest, which is equally useless
without a preimage). A byte-by-byte comparison of plain keys would leak prefixes of the key;
comparing digests of keys does not. Python's hash of bytes is keyed (SipHash, random per
process), so even which bucket a digest falls in cannot be predicted from outside. Whether a
key exists at all is answered by the 401 anyway.
"""

from __future__ import annotations

import hashlib
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
        # load_config refuses a key shared by two tenants, so the map is unambiguous.
        self._tenant_by_digest: dict[bytes, str] = {
            key_digest(key): name for name, tenant in tenants.items() for key in tenant.keys if key
        }

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
        found = self._tenant_by_digest.get(presented)
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
