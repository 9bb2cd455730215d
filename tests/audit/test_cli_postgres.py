"""`guardline audit list|show|export` on a PostgreSQL trail: the same output as on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit.pg_store import PostgresAuditStore
from proxy.audit.record import AuditRecord
from proxy.cli import main
from tests.audit.test_store import NOW, record
from tests.postgres_server import PASSWORD, PostgresServer, postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures used below

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies" / "default.yaml"


@pytest.fixture
def trail(postgres_url: str) -> list[AuditRecord]:
    rows = [
        record(time=NOW - 7200, tenant="acme", verdict="safe", categories=(), score=None),
        record(time=NOW - 600, tenant="globex", categories=("Hate", "Threat")),
        record(time=NOW - 60, policy="finance@0badcafe", stage="output", degraded=True),
    ]
    with PostgresAuditStore(postgres_url) as store:
        store.insert_many(rows)
        store.attach_think(rows[1].id, "<think>it is hateful</think>", "safe", True)
    return rows


def test_list_show_export(
    postgres_url: str, trail: list[AuditRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "list", "--db", postgres_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [r.id for r in reversed(trail)]
    assert "DISAGREE:safe" in lines[2] and "Hate,Threat" in lines[2]

    assert main(["audit", "show", trail[1].id[:16], "--db", postgres_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {**trail[1].to_json_dict(), "think": shown["think"], "think_verdict": "safe",
                     "disagreement": True}  # fmt: skip

    assert main(["audit", "export", "--db", postgres_url, "--category", "threat"]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["id"] for e in exported] == [trail[1].id]
    assert main(["audit", "export", "--db", postgres_url, "--limit", "2"]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["id"] for e in exported] == [trail[1].id, trail[2].id]  # newest 2, oldest first


def test_database_from_the_configs_audit_url(
    postgres_url: str,
    trail: list[AuditRecord],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams:\n  openai: {type: openai}\n"
        f"routes:\n  - {{name: default, upstream: openai, policy: {POLICY}}}\n"
        f"audit: {{url: '{postgres_url}'}}\n"
    )
    assert main(["audit", "export", "--config", str(config)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(trail)


def test_an_unreachable_database_is_one_line_without_the_password(
    postgres_server: PostgresServer, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    postgres_server.stop()
    assert main(["audit", "list", "--db", postgres_url]) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL audit store unavailable" in err
    assert PASSWORD not in err
