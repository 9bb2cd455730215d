"""The PostgreSQL audit store (`audit.url`): the same records and methods as the SQLite store,
in one database that every replica of the gateway writes to.

One connection, guarded by a lock, made lazily: a writer created while the database is down
costs nothing, and the first write that can connect creates or migrates the schema
(proxy/audit/migrations.py). A lost connection is `AuditStoreUnavailable` (the writer retries
the batch later) and is remade on the next call.

Inserts are upserts by record id: a batch retried after a commit whose acknowledgement was lost
still leaves one row per decision.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

from proxy.audit.errors import AuditStoreUnavailable
from proxy.audit.filters import POSTGRES, id_prefix_pattern, where_clause
from proxy.audit.migrations import (
    LATEST_VERSION,
    POSTGRES_MIGRATION_LOCK,
    POSTGRES_MIGRATIONS,
    POSTGRES_VERSION_TABLE,
    SchemaTooNew,
    pending,
)
from proxy.audit.record import AuditRecord
from proxy.audit.store import COLUMNS

T = TypeVar("T")
Connection = psycopg.Connection[DictRow]

# libpq settings unless the URL gives its own. A short connect timeout: a writer retrying a
# down database must come back to its queue (and to shutdown) quickly. TCP keepalives: a
# database host that vanishes without closing the connection is noticed in about 30 s rather
# than the system's two hours, and the writer moves on to retrying.
CONNECTION_DEFAULTS: Final[dict[str, str | int]] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "application_name": "guardline-audit",
}

_INSERT: Final = (
    f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('%s' for _ in COLUMNS)}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
)

# Errors that mean "the database is not there right now", as opposed to a bad statement or value.
_TRANSIENT: Final = (psycopg.OperationalError, psycopg.InterfaceError)


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a client can send one. U+FFFD keeps the rest of the
    # record (and a one-character marker of where it was) rather than losing it.
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _row(record: AuditRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.time,
        _text(record.request_id),
        record.trace_id,
        _text(record.tenant),
        _text(record.route),
        _text(record.policy),
        record.stage,
        record.verdict,
        [_text(c) for c in record.categories],
        record.score,
        _text(record.guard),
        record.guard_latency_ms,
        record.degraded,
        record.content_hash,
        _text(record.content),
        _text(record.think),
        record.think_verdict,
        record.disagreement,
    )


def _record(row: DictRow) -> AuditRecord:
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
        categories=tuple(row["categories"]),
        score=row["score"],
        guard=row["guard"],
        guard_latency_ms=row["guard_latency_ms"],
        degraded=row["degraded"],
        content_hash=row["content_hash"],
        content=row["content"],
        think=row["think"],
        think_verdict=row["think_verdict"],
        disagreement=row["disagreement"],
    )


def _unavailable(exc: Exception) -> AuditStoreUnavailable:
    # psycopg's messages name host and port, never the password.
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return AuditStoreUnavailable(f"PostgreSQL audit store unavailable: {first_line}")


class PostgresAuditStore:
    """Audit records in the `audit` table of the database at `url`."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        if readonly:
            # A reader wants to know now that the database is unreachable or too new.
            self._call(lambda conn: None)

    # --- connection -------------------------------------------------------------------------

    def _connect(self) -> Connection:
        given = conninfo_to_dict(self.url)
        defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
        conninfo = make_conninfo(self.url, **defaults)
        conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)
        try:
            if self.readonly:
                conn.execute("SET default_transaction_read_only = on")
                found = self._version(conn)
                if found > LATEST_VERSION:
                    raise SchemaTooNew(found)
            else:
                self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: Connection) -> None:
        with conn.transaction():
            # Replicas starting together queue here; each migration is applied once.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_MIGRATION_LOCK,))
            conn.execute(POSTGRES_VERSION_TABLE)
            row = conn.execute(
                "SELECT coalesce(max(version), 0) AS v FROM audit_schema_version"
            ).fetchone()
            for migration in pending(POSTGRES_MIGRATIONS, int(row["v"] if row else 0)):
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO audit_schema_version (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )

    @staticmethod
    def _version(conn: Connection) -> int:
        exists = conn.execute("SELECT to_regclass('audit_schema_version') AS t").fetchone()
        if exists is None or exists["t"] is None:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM audit_schema_version")
        found = row.fetchone()
        return int(found["v"]) if found else 0

    def _call(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on the (re)made connection; a lost database is AuditStoreUnavailable."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                return work(self._conn)
            except _TRANSIENT as exc:
                self._discard()
                raise _unavailable(exc) from exc

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._discard()

    def __enter__(self) -> PostgresAuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writing (the writer thread) ----------------------------------------------------------

    def insert_many(self, records: Sequence[AuditRecord]) -> None:
        """Insert (or replace, by id) records in one transaction."""
        if not records:
            return
        rows = [_row(record) for record in records]

        def work(conn: Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(_INSERT, rows)

        self._call(work)

    def insert(self, record: AuditRecord) -> None:
        self.insert_many([record])

    def attach_think(
        self, record_id: str, think: str | None, think_verdict: str, disagreement: bool
    ) -> bool:
        """Attach a THINK re-check to a record. False when no such record exists."""

        def work(conn: Connection) -> bool:
            cursor = conn.execute(
                "UPDATE audit SET think = %s, think_verdict = %s, disagreement = %s WHERE id = %s",
                (_text(think), think_verdict, disagreement, record_id),
            )
            return cursor.rowcount > 0

        return self._call(work)

    # --- reading ------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The highest applied migration (0: no schema yet)."""
        return self._call(self._version)

    def get(self, record_id: str) -> AuditRecord | None:
        row = self._call(
            lambda conn: conn.execute("SELECT * FROM audit WHERE id = %s", (record_id,)).fetchone()
        )
        return None if row is None else _record(row)

    def find_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids starting with `prefix` (for `guardline audit show` with a shortened id)."""
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT id FROM audit WHERE id LIKE %s ESCAPE '\\' ORDER BY id LIMIT %s",
                (id_prefix_pattern(prefix), limit),
            ).fetchall()
        )
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
        """Records matching every given filter, newest first (as `AuditStore.query`)."""
        where, params = where_clause(
            POSTGRES, since, until, tenant, route, policy, verdict, category, stage, disagreement
        )
        sql = "SELECT * FROM audit" + where + " ORDER BY time DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        rows = self._call(lambda conn: conn.execute(sql, params).fetchall())
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
        """Every matching record, oldest first, `batch` rows at a time through a server-side
        cursor (constant memory for any size of trail). Filters as in `query`."""
        where, params = where_clause(
            POSTGRES, since, until, tenant, route, policy, verdict, category, stage, disagreement
        )
        sql = "SELECT * FROM audit" + where + " ORDER BY time, id"
        # A separate connection: the cursor's transaction stays open while the caller consumes
        # the records, and must not hold this store's lock (or its connection) meanwhile.
        try:
            conn = self._connect()
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc
        try:
            with conn.transaction(), conn.cursor(name="guardline_audit_export") as cursor:
                cursor.itersize = batch
                cursor.execute(sql, params)
                while rows := cursor.fetchmany(batch):
                    yield from (_record(row) for row in rows)
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc
        finally:
            conn.close()

    def count(self) -> int:
        row = self._call(lambda conn: conn.execute("SELECT count(*) AS n FROM audit").fetchone())
        return int(row["n"]) if row else 0
