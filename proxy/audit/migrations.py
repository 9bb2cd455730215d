"""The audit schema, versioned: ordered migrations per store and the table that records them.

Every store keeps `audit_schema_version` (one row per applied migration). On opening for
writing, a store applies, in order and in one transaction, each migration newer than the
highest recorded version, holding a lock that makes concurrent starters (several replicas on
one PostgreSQL, several processes on one SQLite file) apply each migration exactly once.

A schema change is a new `Migration` appended to both lists with the next version number;
never edit one that has shipped. Readers refuse a schema newer than they know.

Version 1 uses `IF NOT EXISTS` so that an SQLite trail written before versioning existed (the
same table, no version table) is adopted as version 1 without change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS audit_time ON audit (time)",
    "CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, time)",
    "CREATE INDEX IF NOT EXISTS audit_route ON audit (route, time)",
    "CREATE INDEX IF NOT EXISTS audit_policy ON audit (policy, time)",
    "CREATE INDEX IF NOT EXISTS audit_verdict ON audit (verdict, time)",
    "CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id)",
)

SQLITE_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS audit_schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  REAL NOT NULL
)
"""

SQLITE_MIGRATIONS: Final = (
    Migration(
        1,
        "audit table and its indexes",
        (
            """
            CREATE TABLE IF NOT EXISTS audit (
                id               TEXT PRIMARY KEY,
                time             REAL NOT NULL,
                request_id       TEXT NOT NULL,
                trace_id         TEXT,
                tenant           TEXT,
                route            TEXT NOT NULL,
                policy           TEXT NOT NULL,
                stage            TEXT NOT NULL,
                verdict          TEXT NOT NULL,
                categories       TEXT NOT NULL DEFAULT '[]',
                score            REAL,
                guard            TEXT NOT NULL,
                guard_latency_ms REAL NOT NULL,
                degraded         INTEGER NOT NULL DEFAULT 0,
                content_hash     TEXT NOT NULL,
                content          TEXT,
                think            TEXT,
                think_verdict    TEXT,
                disagreement     INTEGER NOT NULL DEFAULT 0
            )
            """,
            *_INDEXES,
        ),
    ),
)

POSTGRES_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS audit_schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# Any two replicas starting at once serialise on this transaction-scoped advisory lock (an
# arbitrary constant: "guardline audit schema").
POSTGRES_MIGRATION_LOCK: Final = 0x6775_6172_6431

POSTGRES_MIGRATIONS: Final = (
    Migration(
        1,
        "audit table and its indexes",
        (
            # `time` stays epoch seconds (double precision) so that both stores return the
            # same records bit for bit. COLLATE "C" on the columns queried by prefix or range
            # (id prefixes, `policy` name ranges): byte order whatever the database's locale.
            """
            CREATE TABLE IF NOT EXISTS audit (
                id               text COLLATE "C" PRIMARY KEY,
                time             double precision NOT NULL,
                request_id       text NOT NULL,
                trace_id         text,
                tenant           text,
                route            text NOT NULL,
                policy           text COLLATE "C" NOT NULL,
                stage            text NOT NULL,
                verdict          text NOT NULL,
                categories       text[] NOT NULL DEFAULT '{}',
                score            double precision,
                guard            text NOT NULL,
                guard_latency_ms double precision NOT NULL,
                degraded         boolean NOT NULL DEFAULT false,
                content_hash     text NOT NULL,
                content          text,
                think            text,
                think_verdict    text,
                disagreement     boolean NOT NULL DEFAULT false
            )
            """,
            *_INDEXES,
        ),
    ),
)

LATEST_VERSION: Final = SQLITE_MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The store was written by a newer guardline than this one."""

    def __init__(self, found: int) -> None:
        super().__init__(
            f"the audit schema is version {found}, newer than this guardline knows "
            f"({LATEST_VERSION}); upgrade guardline to read it"
        )
        self.found = found


def pending(migrations: tuple[Migration, ...], current: int) -> list[Migration]:
    """The migrations to apply, in order, to a schema at version `current`."""
    if current > migrations[-1].version:
        raise SchemaTooNew(current)
    return [m for m in migrations if m.version > current]
