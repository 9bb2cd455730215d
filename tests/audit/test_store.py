"""AuditRecord and the SQLite store: schema, WAL, filters, THINK attachment."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from guard_engine.types import GuardImage, GuardRequest
from proxy.audit.record import AuditRecord, content_hash
from proxy.audit.store import AuditStore
from tests.factories import make_verdict

NOW = 1_790_000_000.0


def record(**overrides: object) -> AuditRecord:
    fields: dict[str, object] = {
        "time": NOW,
        "request_id": "req-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "tenant": "acme",
        "route": "kids",
        "policy": "kids-education@1a2b3c4d",
        "stage": "input",
        "verdict": "unsafe",
        "categories": ("Violence",),
        "score": 0.9,
        "guard": "nemotron",
        "guard_latency_ms": 12.0,
        "degraded": False,
        "content_hash": "ab" * 32,
    }
    fields.update(overrides)
    return AuditRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    return AuditStore(tmp_path / "sub" / "audit.sqlite3")


def test_roundtrip_and_wal(store: AuditStore) -> None:
    original = record(content="hello", categories=("Violence", "Threat"))
    store.insert(original)
    assert store.get(original.id) == original
    assert store.get("missing") is None
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in db.execute("PRAGMA index_list(audit)")}
    assert {"audit_time", "audit_tenant", "audit_route", "audit_policy", "audit_verdict"} <= indexes


def ids(found: list[AuditRecord]) -> list[str]:
    return [r.id for r in found]


def test_filters(store: AuditStore) -> None:
    rows = [
        record(time=NOW - 7200, tenant="acme", verdict="safe", categories=()),
        record(time=NOW - 600, tenant="globex", route="default", categories=("Hate", "Threat")),
        record(time=NOW - 60, policy="kids-education@99999999", stage="output"),
        record(time=NOW, policy="finance@1a2b3c4d", verdict="safe", categories=()),
        record(time=NOW + 1, policy="kids-educationX@00000000"),
    ]
    store.insert_many(rows)
    assert ids(store.query()) == [r.id for r in reversed(rows)]  # newest first
    assert ids(store.query(since=NOW - 600, until=NOW)) == [rows[2].id, rows[1].id]
    assert ids(store.query(tenant="globex")) == [rows[1].id]
    assert ids(store.query(route="default")) == [rows[1].id]
    assert ids(store.query(verdict="safe")) == [rows[3].id, rows[0].id]
    # A policy name matches every version of it, and only it; name@hash matches exactly.
    assert ids(store.query(policy="kids-education")) == [rows[2].id, rows[1].id, rows[0].id]
    assert ids(store.query(policy="kids-education@99999999")) == [rows[2].id]
    assert ids(store.query(category="threat")) == [rows[1].id]
    assert ids(store.query(category="Violence", stage="output")) == [rows[2].id]
    assert ids(store.query(limit=2)) == [rows[4].id, rows[3].id]
    assert ids(store.query(tenant="acme", verdict="unsafe", category="Hate")) == []
    assert store.count() == 5


def test_attach_think_and_prefix_lookup(store: AuditStore) -> None:
    r = record()
    store.insert(r)
    assert store.attach_think(r.id, "The user asks for ...", "safe", True)
    assert not store.attach_think("nope", None, "safe", False)
    got = store.get(r.id)
    assert got is not None
    assert (got.think, got.think_verdict, got.disagreement) == (
        "The user asks for ...",
        "safe",
        True,
    )
    assert store.query(disagreement=True)[0].id == r.id
    assert store.find_ids(r.id[:14]) == [r.id]
    assert store.find_ids("%") == []  # LIKE wildcards are literal


def test_readonly_store_reads_while_the_writer_has_it_open(store: AuditStore) -> None:
    store.insert(record())
    with AuditStore(store.path, readonly=True) as reader:
        assert reader.count() == 1
        with pytest.raises(sqlite3.OperationalError):
            reader.insert(record())


def test_record_from_verdict() -> None:
    image = GuardImage(data=b"x", mime="image/png", sha256="cd" * 32)
    request = GuardRequest(prompt="how do I hurt", response="I can't help", images=(image,))
    verdict = make_verdict(
        stage="output",
        prompt_label="unsafe",
        response_label="unsafe",
        categories=("Violence",),
        score=0.8,
        latency_ms=7.5,
        policy="kids@0011aabb",
    )
    r = AuditRecord.from_verdict(
        verdict,
        request,
        request_id="req-9",
        route="kids",
        tenant="acme",
        trace_id="t" * 32,
        store_content=True,
        now=NOW,
    )
    assert (r.stage, r.verdict, r.policy, r.guard_latency_ms) == (
        "output",
        "unsafe",
        "kids@0011aabb",
        7.5,
    )
    assert r.content == "I can't help"
    assert r.content_hash == content_hash(request)
    assert r.id[:12] == format(int(NOW * 1000), "012x")
    without = AuditRecord.from_verdict(verdict, request, request_id="r", route="kids", now=NOW)
    assert without.content is None and without.trace_id is None
    assert without.content_hash == r.content_hash
    # The hash covers the response and the images: a different image is different content.
    other = GuardRequest(prompt="how do I hurt", response="I can't help")
    assert content_hash(other) != content_hash(request)
    assert content_hash(GuardRequest(prompt="abc")) == hashlib.sha256(b"abc").hexdigest()
    exported = r.to_json_dict()
    assert exported["time"] == "2026-09-21T14:13:20.000Z"
    assert next(iter(exported)) == "id" and exported["categories"] == ["Violence"]


def test_think_mode_verdict_carries_its_reasoning() -> None:
    verdict = make_verdict(think="reasoning here", prompt_label="unsafe", mode="think")
    r = AuditRecord.from_verdict(verdict, GuardRequest(prompt="p"), request_id="r", route="x")
    assert (r.think, r.think_verdict) == ("reasoning here", "unsafe")


def test_iter_query_streams_oldest_first(store: AuditStore) -> None:
    rows = [record(time=NOW + i, tenant="acme" if i % 2 else "globex") for i in range(25)]
    store.insert_many(rows)
    assert [r.id for r in store.iter_query(batch=7)] == [r.id for r in rows]
    acme = [r.id for r in store.iter_query(tenant="acme", since=NOW + 10, batch=4)]
    assert acme == [r.id for r in rows[10:] if r.tenant == "acme"]
