"""The SQLite audit store: one table, WAL mode, indexed for the questions operators ask
("what was blocked for tenant X on route Y in the last hour, and why").

One connection guarded by a lock: the writer thread inserts in batches, readers (the CLI, an
admin endpoint) query. WAL lets another process (`guardline audit list`) read while the gateway
writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from proxy.audit.record import AuditRecord

SCHEMA_VERSION: Final = 1

_COLUMNS: Final = (
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

_SCHEMA: Final = """
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
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, time);
CREATE INDEX IF NOT EXISTS audit_route ON audit (route, time);
CREATE INDEX IF NOT EXISTS audit_policy ON audit (policy, time);
CREATE INDEX IF NOT EXISTS audit_verdict ON audit (verdict, time);
CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id);
"""

_INSERT: Final = (
    f"INSERT OR REPLACE INTO audit ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
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

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
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
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")

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
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM audit WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
                (escaped + "%", limit),
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
        where, params = _filters(
            since, until, tenant, route, policy, verdict, category, stage, disagreement
        )
        sql = "SELECT * FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
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
        where, params = _filters(
            since, until, tenant, route, policy, verdict, category, stage, disagreement
        )
        sql = "SELECT * FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
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


def _filters(
    since: float | None,
    until: float | None,
    tenant: str | None,
    route: str | None,
    policy: str | None,
    verdict: str | None,
    category: str | None,
    stage: str | None,
    disagreement: bool | None,
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    if until is not None:
        where.append("time < ?")
        params.append(until)
    for column, value in (("tenant", tenant), ("route", route), ("verdict", verdict)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if stage is not None:
        where.append("stage = ?")
        params.append(stage)
    if policy is not None:
        if "@" in policy:
            where.append("policy = ?")
            params.append(policy)
        else:
            # A range on the indexed column: every `name@<hash>` sorts in [`name@`, `nameA`)
            # because "A" is the character right after "@".
            where.append("policy >= ? AND policy < ?")
            params.extend([policy + "@", policy + "A"])
    if category is not None:
        where.append(
            "EXISTS (SELECT 1 FROM json_each(audit.categories) WHERE lower(value) = lower(?))"
        )
        params.append(category)
    if disagreement is not None:
        where.append("disagreement = ?")
        params.append(int(disagreement))
    return where, params
