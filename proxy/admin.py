"""The operator's endpoints (`/metrics`, `/readyz` details) behind `server.admin_key`.

Metrics and readiness details describe the deployment (routes, tenants count, upstream and
guard names, circuit states, traffic per route): not for tenants. Without an admin key they
stay open as before, which is why the gateway binds 127.0.0.1 by default. With one, they need
`Authorization: Bearer <admin key>`; the key is compared as a SHA-256 digest in constant time,
like tenant keys, so timing reveals nothing about it.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import HTTPConnection


class AdminGate:
    __slots__ = ("_digest",)

    def __init__(self, admin_key: str) -> None:
        self._digest = hashlib.sha256(admin_key.encode()).digest() if admin_key else None

    @property
    def restricted(self) -> bool:
        return self._digest is not None

    def allows(self, conn: HTTPConnection) -> bool:
        """True when no admin key is configured or the request presents it."""
        if self._digest is None:
            return True
        scheme, _, token = conn.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = hashlib.sha256(token.strip().encode()).digest()
        return hmac.compare_digest(presented, self._digest)
