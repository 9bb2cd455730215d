"""`guardline audit list|show|export` on a temporary database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit.record import AuditRecord
from proxy.audit.store import AuditStore
from proxy.cli import main
from proxy.cli.audit import parse_time
from tests.audit.test_store import record

REPO = Path(__file__).resolve().parents[2]
NOW = 1_790_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, list[AuditRecord]]:
    path = tmp_path / "audit.sqlite3"
    rows = [
        record(time=NOW - 7200, tenant="acme", verdict="safe", categories=(), score=None),
        record(time=NOW - 600, tenant="globex", route="default", categories=("Hate", "Threat")),
        record(time=NOW - 60, policy="finance@0badcafe", stage="output", degraded=True),
    ]
    with AuditStore(path) as store:
        store.insert_many(rows)
        store.attach_think(rows[1].id, "<think>it is hateful</think>", "safe", True)
    return path, rows


def test_list_prints_a_table_newest_first(
    db: tuple[Path, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, rows = db
    assert main(["audit", "list", "--db", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["ID", "TIME", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == [rows[2].id, rows[1].id, rows[0].id]
    assert "unsafe (degraded)" in lines[1]
    assert "DISAGREE:safe" in lines[2] and "Hate,Threat" in lines[2]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tenant", "globex"], [1]),
        (["--route", "default"], [1]),
        (["--policy", "kids-education"], [1, 0]),
        (["--policy", "finance@0badcafe"], [2]),
        (["--verdict", "safe"], [0]),
        (["--category", "threat"], [1]),
        (["--stage", "output"], [2]),
        (["--disagreement"], [1]),
        (["--limit", "1"], [2]),
        (["--since", "2026-09-21T14:00:00Z"], [2, 1]),
        (["--until", "2026-09-21T14:00:00"], [0]),
        (["--tenant", "nobody"], []),
    ],
)
def test_export_filters(
    db: tuple[Path, list[AuditRecord]],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: list[int],
) -> None:
    path, rows = db
    assert main(["audit", "export", "--db", str(path), *flags]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Export is oldest first; `expected` lists newest first like `list`.
    assert [e["id"] for e in exported] == [rows[i].id for i in reversed(expected)]


def test_export_to_a_file_and_show(
    db: tuple[Path, list[AuditRecord]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, rows = db
    out = tmp_path / "out.jsonl"
    assert main(["audit", "export", "--db", str(path), "--out", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in exported] == [r.id for r in rows]
    assert exported[1]["think"] == "<think>it is hateful</think>"
    assert exported[1]["categories"] == ["Hate", "Threat"]
    capsys.readouterr()

    assert main(["audit", "show", rows[1].id[:16], "--db", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == rows[1].id and shown["disagreement"] is True
    assert main(["audit", "show", "ffff", "--db", str(path)]) == 1
    assert "no record" in capsys.readouterr().err


def test_database_from_config_and_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    policy = REPO / "policies" / "default.yaml"
    config.write_text(
        "upstreams:\n  openai: {type: openai}\n"
        f"routes:\n  - {{name: default, upstream: openai, policy: {policy}}}\n"
        "audit: {path: data/trail.sqlite3}\n"
    )
    assert main(["audit", "list", "--config", str(config)]) == 1
    assert str(tmp_path / "data" / "trail.sqlite3") in capsys.readouterr().err
    with AuditStore(tmp_path / "data" / "trail.sqlite3") as store:
        store.insert(record())
    assert main(["audit", "list", "--config", str(config)]) == 0
    assert "kids-education@1a2b3c4d" in capsys.readouterr().out

    config.write_text("routes: []\nbogus: 1\n")
    assert main(["audit", "list", "--config", str(config)]) == 2


def test_parse_time() -> None:
    assert parse_time("90m", now=NOW) == NOW - 5400
    assert parse_time("1w", now=NOW) == NOW - 604800
    assert parse_time("2026-09-21T14:13:20Z") == NOW
    assert parse_time("2026-09-21T16:13:20+02:00") == NOW
    with pytest.raises(Exception, match="neither an ISO time"):
        parse_time("yesterday")
