"""The one interface of an audit store, whichever database holds it, and how to open one.

`open_audit_store(target)` takes what `audit.url` or `audit.path` says: a
`postgresql://user:pass@host:port/db` URL opens the PostgreSQL store (`pg_store`), anything
else is the path of an SQLite file (`store`). Both return the same records from the same
methods (`AuditStorage`), so the CLI and every other reader of the trail work on either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from proxy.audit.errors import AuditStoreUnavailable
from proxy.audit.record import AuditRecord

__all__ = ["AuditStorage", "AuditStoreUnavailable", "is_postgres_url", "open_audit_store"]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


class AuditStorage(Protocol):
    """What both stores offer. Reads are newest first (`query`) or oldest first (`iter_query`,
    streamed); `since`/`until` are epoch seconds (inclusive/exclusive)."""

    def insert_many(self, records: Sequence[AuditRecord]) -> None: ...

    def attach_think(
        self, record_id: str, think: str | None, think_verdict: str, disagreement: bool
    ) -> bool: ...

    def get(self, record_id: str) -> AuditRecord | None: ...

    def find_ids(self, prefix: str, limit: int = 2) -> list[str]: ...

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
        route: str | None = None,
        policy: str | None = None,
        verdict: str | None = None,
        category: str | None = None,
        limit: int | None = 100,
        *,
        stage: str | None = None,
        disagreement: bool | None = None,
    ) -> list[AuditRecord]: ...

    def iter_query(
        self,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
        route: str | None = None,
        policy: str | None = None,
        verdict: str | None = None,
        category: str | None = None,
        *,
        stage: str | None = None,
        disagreement: bool | None = None,
        batch: int = 1000,
    ) -> Iterator[AuditRecord]: ...

    def count(self) -> int: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> AuditStorage: ...

    def __exit__(self, *exc_info: object) -> None: ...


def is_postgres_url(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_audit_store(target: str | os.PathLike[str], *, readonly: bool = True) -> AuditStorage:
    """The store at `target` (a PostgreSQL URL or an SQLite path).

    Read-only by default (the CLI, reports): safe beside a running gateway; an SQLite file must
    exist and an unreachable PostgreSQL raises `AuditStoreUnavailable` at once. With
    `readonly=False` (the gateway's writer) the schema is created or migrated; a PostgreSQL
    store then connects lazily, so a database that is down does not stop the caller.
    """
    if is_postgres_url(target):
        from proxy.audit.pg_store import PostgresAuditStore

        return PostgresAuditStore(str(target), readonly=readonly)
    from proxy.audit.store import AuditStore

    return AuditStore(target, readonly=readonly)
