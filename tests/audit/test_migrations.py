"""The SQLite store's versioned schema: created once, adopted from a pre-versioning trail,
refused when newer than this guardline."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from proxy.audit.migrations import LATEST_VERSION, SchemaTooNew
from proxy.audit.storage import open_audit_store
from proxy.audit.store import AuditStore
from tests.audit.test_store import record

# The trail as guardline wrote it before the schema was versioned (user_version 1 only).
LEGACY_SCHEMA = """
CREATE TABLE audit (
    id TEXT PRIMARY KEY, time REAL NOT NULL, request_id TEXT NOT NULL, trace_id TEXT,
    tenant TEXT, route TEXT NOT NULL, policy TEXT NOT NULL, stage TEXT NOT NULL,
    verdict TEXT NOT NULL, categories TEXT NOT NULL DEFAULT '[]', score REAL,
    guard TEXT NOT NULL, guard_latency_ms REAL NOT NULL, degraded INTEGER NOT NULL DEFAULT 0,
    content_hash TEXT NOT NULL, content TEXT, think TEXT, think_verdict TEXT,
    disagreement INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX audit_time ON audit (time);
PRAGMA user_version=1;
"""


def _versions(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT version, description FROM audit_schema_version ORDER BY version"
        ).fetchall()


def test_a_new_file_records_every_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    stores = [AuditStore(path) for _ in range(3)]  # three processes opening one file
    assert [v for v, _ in _versions(path)] == list(range(1, LATEST_VERSION + 1))
    assert all(store.schema_version() == LATEST_VERSION for store in stores)
    for store in stores:
        store.close()


def test_concurrent_openers_do_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    errors: list[BaseException] = []

    def open_and_write(i: int) -> None:
        try:
            with AuditStore(path) as store:
                store.insert(record(request_id=str(i)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(_versions(path)) == LATEST_VERSION


def test_a_pre_versioning_trail_is_adopted_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = record()
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
    with AuditStore(path) as store:  # what the gateway does at start
        store.insert(old)
    with open_audit_store(path) as reader:
        assert reader.get(old.id) == old
        assert reader.schema_version() == LATEST_VERSION
    assert _versions(path)[0][0] == 1


def test_a_reader_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    AuditStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO audit_schema_version VALUES (?, 'from the future', 0)",
            (LATEST_VERSION + 1,),
        )
    with pytest.raises(SchemaTooNew, match="upgrade guardline"):
        open_audit_store(path)
    with pytest.raises(SchemaTooNew):
        AuditStore(path)  # nor may a writer run old migrations over it
