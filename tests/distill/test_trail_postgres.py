"""distill reads the shared PostgreSQL audit store the same way as an SQLite file."""

from __future__ import annotations

import pytest

from proxy.audit.storage import open_audit_store
from proxy.config_schema import AuditConfig
from proxy.distill.trail import TrailUnavailable, read_trail, select_decisions
from tests.audit.test_store import NOW, record
from tests.postgres_server import PostgresServer, postgres_server, postgres_url

__all__ = ["PostgresServer", "postgres_server", "postgres_url"]  # fixtures


def test_a_postgresql_trail_is_read_oldest_first_and_filtered(postgres_url: str) -> None:
    records = [
        record(request_id="r2", time=NOW + 2, content="later", policy="shop@00000002"),
        record(request_id="r1", time=NOW + 1, content="first", policy="shop@00000001"),
        record(request_id="r1", time=NOW + 1.5, stage="output", content="an answer",
               policy="shop@00000001"),
        record(request_id="x", time=NOW, content="other policy", policy="kids@00000001"),
    ]  # fmt: skip
    with open_audit_store(postgres_url, readonly=False) as store:
        store.insert_many(records)
    trail = list(read_trail(AuditConfig(url=postgres_url), policy="shop", tenant=None))
    assert [r.content for r in trail] == ["first", "an answer", "later"]
    selection = select_decisions(trail, frozenset({"nemotron"}))
    answer = next(d for d in selection.decisions if d.stage == "output")
    assert (answer.prompt, answer.response) == ("first", "an answer")
    since = list(read_trail(AuditConfig(url=postgres_url), policy="shop", tenant=None,
                            since=NOW + 1.75))  # fmt: skip
    assert [r.request_id for r in since] == ["r2"]


def test_an_unreachable_postgresql_is_a_clear_refusal() -> None:
    url = "postgresql://guardline:pw@127.0.0.1:9/none?connect_timeout=1"
    with pytest.raises(TrailUnavailable, match="PostgreSQL audit store unavailable"):
        list(read_trail(AuditConfig(url=url), policy="shop", tenant=None))
