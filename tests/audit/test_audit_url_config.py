"""`audit.url` in config.yaml: a PostgreSQL URL, exclusive with an explicit `audit.path`."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard_engine.errors import ConfigFileError
from proxy.audit.url import redacted
from proxy.config import load_config

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies" / "default.yaml"


def _config(tmp_path: Path, audit: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams:\n  openai: {type: openai}\n"
        f"routes:\n  - {{name: default, upstream: openai, policy: {POLICY}}}\n"
        f"audit:\n{audit}"
    )
    return config


def test_url_alone_is_accepted(tmp_path: Path) -> None:
    url = "postgresql://guardline:secret@db.internal:5432/audit"
    config = load_config(_config(tmp_path, f"  url: '{url}'\n"))
    assert config.audit.url == url


def test_url_and_path_together_are_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, "  path: trail.sqlite3\n  url: 'postgresql://h/audit'\n")
    with pytest.raises(ConfigFileError) as raised:
        load_config(path)
    assert raised.value.key == "audit.url" and raised.value.line == 7
    assert "audit.url and audit.path are both set" in str(raised.value)


@pytest.mark.parametrize("url", ["mysql://h/db", "/var/lib/audit.sqlite3", "postgresql://h/db?bad"])
def test_a_url_that_is_not_postgresql_names_the_key(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigFileError) as raised:
        load_config(_config(tmp_path, f"  url: '{url}'\n"))
    assert raised.value.key == "audit.url"
    assert "PostgreSQL URL" in str(raised.value)


def test_redacted_hides_the_password() -> None:
    assert redacted("postgresql://u:p4ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redacted("postgresql://h/db") == "postgresql://h/db"
