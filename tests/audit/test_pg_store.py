"""The PostgreSQL audit store against a real PostgreSQL, side by side with the SQLite store:
the same records and answers through `open_audit_store`, a versioned schema created once by
concurrent starters, and an outage reported as `AuditStoreUnavailable`, then recovered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.audit.migrations import LATEST_VERSION, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from proxy.audit.pg_store import PostgresAuditStore
from proxy.audit.storage import AuditStorage, AuditStoreUnavailable, open_audit_store
from tests.audit.test_store import NOW, record
from tests.postgres_server import PostgresServer, postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures used below


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(target: str) -> Iterator[AuditStorage]:
    with open_audit_store(target, readonly=False) as opened:
        yield opened


def test_both_stores_know_the_same_schema_version() -> None:
    assert SQLITE_MIGRATIONS[-1].version == POSTGRES_MIGRATIONS[-1].version == LATEST_VERSION


def test_records_round_trip_identically(store: AuditStorage, target: str) -> None:
    original = record(content="hello\nworld", categories=("Violence", "Threat"), score=None)
    plain = record(request_id="req-2", tenant=None, degraded=True)
    store.insert_many([original, plain])
    assert store.get(original.id) == original
    assert store.get(plain.id) == plain
    assert store.get("missing") is None
    assert store.schema_version() == LATEST_VERSION
    with open_audit_store(target) as reader:  # read-only, as the CLI opens it
        assert reader.get(original.id) == original
        assert reader.count() == 2
        assert reader.schema_version() == LATEST_VERSION


def test_filters_answer_the_same(store: AuditStorage) -> None:
    rows = [
        record(time=NOW - 300, tenant="acme", verdict="safe", categories=()),
        record(time=NOW - 200, tenant="globex", route="default", categories=("Hate", "Threat")),
        record(time=NOW - 100, policy="finance@0badcafe", stage="output"),
        record(time=NOW, policy="kids-educationX@00000000"),  # not a version of kids-education
    ]
    store.insert_many(rows)

    def found(**filters: object) -> list[int]:
        ids = [r.id for r in rows]
        return [ids.index(r.id) for r in store.query(**filters)]  # type: ignore[arg-type]

    assert found() == [3, 2, 1, 0]
    assert found(tenant="globex") == [1]
    assert found(route="default") == [1]
    assert found(policy="kids-education") == [1, 0]
    assert found(policy="finance@0badcafe") == [2]
    assert found(verdict="safe") == [0]
    assert found(category="threat") == [1]
    assert found(stage="output") == [2]
    assert found(since=NOW - 200, until=NOW) == [2, 1]
    assert found(limit=1) == [3]
    assert found(disagreement=False) == [3, 2, 1, 0]
    assert store.attach_think(rows[1].id, "<think>x</think>", "safe", True)
    assert not store.attach_think("missing", None, "safe", False)
    assert found(disagreement=True) == [1]
    assert [r.id for r in store.iter_query(batch=2)] == [r.id for r in rows]  # oldest first
    assert [r.id for r in store.iter_query(tenant="globex")] == [rows[1].id]
    assert store.find_ids(rows[2].id[:14], limit=5) == [rows[2].id]


def test_an_upsert_keeps_one_row_per_record(store: AuditStorage) -> None:
    # The writer retries a batch whose commit was not acknowledged: it must not duplicate.
    first = record()
    store.insert_many([first])
    store.insert_many([first])
    assert store.count() == 1


def test_nul_characters_do_not_lose_the_record(postgres_url: str) -> None:
    with PostgresAuditStore(postgres_url) as store:
        sent = record(content="before\x00after")
        store.insert_many([sent])
        stored = store.get(sent.id)
    assert stored is not None and stored.content == "before\ufffdafter"


def test_concurrent_starters_migrate_once(postgres_url: str) -> None:
    stores = [PostgresAuditStore(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []

    def first_write(store: PostgresAuditStore, i: int) -> None:
        try:
            store.insert_many([record(request_id=f"r{i}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_write, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version FROM audit_schema_version").fetchall()
    assert versions == [(LATEST_VERSION,)]
    assert stores[0].count() == 4
    for store in stores:
        store.close()


def test_a_writer_store_is_created_while_the_database_is_down(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    postgres_server.stop()
    store = PostgresAuditStore(postgres_url)  # no connection yet: nothing to fail
    with pytest.raises(AuditStoreUnavailable) as raised:
        store.insert_many([record()])
    assert "audit-secret" not in str(raised.value)
    with pytest.raises(AuditStoreUnavailable):
        open_audit_store(postgres_url)  # a reader is told at once
    postgres_server.start()
    store.insert_many([record()])  # reconnects and creates the schema
    assert store.count() == 1
    store.close()


def test_an_outage_mid_run_is_unavailable_then_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = PostgresAuditStore(postgres_url)
    store.insert_many([record(request_id="before")])
    postgres_server.stop()
    with pytest.raises(AuditStoreUnavailable):
        store.insert_many([record(request_id="during")])
    postgres_server.start()
    store.insert_many([record(request_id="after")])
    assert sorted(r.request_id for r in store.query()) == ["after", "before"]
    store.close()
