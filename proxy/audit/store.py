"""The SQLite audit store: one table, WAL mode, indexed for the questions operators ask
("what was blocked for tenant X on route Y in the last hour, and why").

One connection guarded by a lock: the writer thread inserts in batches, readers (the CLI, an
admin endpoint) query. WAL lets another process (`guardline audit list`) read while the gateway
writes. The schema is versioned (proxy/audit/migrations.py); the PostgreSQL store
(`pg_store.py`) has the same methods, and `open_audit_store` picks one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from proxy.audit.filters import SQLITE, id_prefix_pattern, where_clause
from proxy.audit.migrations import (
    LATEST_VERSION,
    SQLITE_MIGRATIONS,
    SQLITE_VERSION_TABLE,
    SchemaTooNew,
    pending,
)
from proxy.audit.record import AuditRecord

# Kept for readers of older files' `PRAGMA user_version`; the versions live in
# `audit_schema_version` (proxy/audit/migrations.py).
SCHEMA_VERSION: Final = LATEST_VERSION

COLUMNS: Final = (
    "id",
    "time",
    "request_id",
    "trace_id",
    "tenant",
    "route",
    "policy",
    "stage",
    "verdict",
    "categories",
    "score",
    "guard",
    "guard_latency_ms",
    "degraded",
    "content_hash",
    "content",
    "think",
    "think_verdict",
    "disagreement",
)

_INSERT: Final = (
    f"INSERT OR REPLACE INTO audit ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)


def _row(record: AuditRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.time,
        record.request_id,
        record.trace_id,
        record.tenant,
        record.route,
        record.policy,
        record.stage,
        record.verdict,
        orjson.dumps(list(record.categories)).decode("utf-8"),
        record.score,
        record.guard,
        record.guard_latency_ms,
        int(record.degraded),
        record.content_hash,
        record.content,
        record.think,
        record.think_verdict,
        int(record.disagreement),
    )


def _record(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        time=row["time"],
        request_id=row["request_id"],
        trace_id=row["trace_id"],
        tenant=row["tenant"],
        route=row["route"],
        policy=row["policy"],
        stage=row["stage"],
        verdict=row["verdict"],
        categories=tuple(orjson.loads(row["categories"])),
        score=row["score"],
        guard=row["guard"],
        guard_latency_ms=row["guard_latency_ms"],
        degraded=bool(row["degraded"]),
        content_hash=row["content_hash"],
        content=row["content"],
        think=row["think"],
        think_verdict=row["think_verdict"],
        disagreement=bool(row["disagreement"]),
    )


class AuditStore:
    """SQLite audit records at `path` (created with its directory if missing)."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: durable against a process crash, and no fsync per commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")
        if readonly:
            found = self.schema_version()
            if found > LATEST_VERSION:
                self._db.close()
                raise SchemaTooNew(found)

    def _migrate(self) -> None:
        # BEGIN IMMEDIATE takes the write lock first: two processes opening one new file
        # apply each migration once (the second waits, then finds nothing pending).
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(SQLITE_VERSION_TABLE)
            (current,) = self._db.execute(
                "SELECT coalesce(max(version), 0) FROM audit_schema_version"
            ).fetchone()
            for migration in pending(SQLITE_MIGRATIONS, int(current)):
                for statement in migration.statements:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO audit_schema_version (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def schema_version(self) -> int:
        """The highest applied migration (0: no versioned schema yet)."""
        with self._lock:
            table = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_schema_version'"
            ).fetchone()
            if table is None:
                return 0
            (version,) = self._db.execute(
                "SELECT coalesce(max(version), 0) FROM audit_schema_version"
            ).fetchone()
        return int(version)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writing (the writer thread) ------------------------------------------------------------

    def insert_many(self, records: Sequence[AuditRecord]) -> None:
        """Insert (or replace, by id) records in one transaction."""
        if not records:
            return
        rows = [_row(record) for record in records]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def insert(self, record: AuditRecord) -> None:
        self.insert_many([record])

    def attach_think(
        self, record_id: str, think: str | None, think_verdict: str, disagreement: bool
    ) -> bool:
        """Attach a THINK re-check to a record. False when no such record exists."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE audit SET think = ?, think_verdict = ?, disagreement = ? WHERE id = ?",
                (think, think_verdict, int(disagreement), record_id),
            )
            return cursor.rowcount > 0

    # --- reading ----------------------------------------------------------------------------------

    def get(self, record_id: str) -> AuditRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM audit WHERE id = ?", (record_id,)).fetchone()
        return None if row is None else _record(row)

    def find_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids starting with `prefix` (for `guardline audit show` with a shortened id)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM audit WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
                (id_prefix_pattern(prefix), limit),
            ).fetchall()
        return [row["id"] for row in rows]

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
    ) -> list[AuditRecord]:
        """Records matching every given filter, newest first.

        `since`/`until` are epoch seconds (since inclusive, until exclusive). `policy` matches
        `name@hash8` exactly or any version of `name`. `category` matches case-insensitively.
        """
        where, params = where_clause(
            SQLITE, since, until, tenant, route, policy, verdict, category, stage, disagreement
        )
        sql = "SELECT * FROM audit" + where
        sql += " ORDER BY time DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_record(row) for row in rows]

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
    ) -> Iterator[AuditRecord]:
        """Every matching record, oldest first, read `batch` rows at a time (exports of a
        large trail stay in constant memory). Filters as in `query`."""
        where, params = where_clause(
            SQLITE, since, until, tenant, route, policy, verdict, category, stage, disagreement
        )
        sql = "SELECT * FROM audit" + where
        sql += " ORDER BY time, id"
        with self._lock:
            cursor = self._db.execute(sql, params)
        while True:
            with self._lock:
                rows = cursor.fetchmany(batch)
            if not rows:
                return
            yield from (_record(row) for row in rows)

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) AS n FROM audit").fetchone()
        return int(row["n"])
