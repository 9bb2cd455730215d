"""Checking an `audit.url` before anything connects to it, and showing it without its password."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

from proxy.audit.storage import POSTGRES_SCHEMES

EXAMPLE: Final = "postgresql://user:password@host:5432/database"


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a PostgreSQL audit store, or None when it looks usable."""
    if not url.startswith(POSTGRES_SCHEMES):
        return f"must be a PostgreSQL URL ({EXAMPLE})"
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        return f"not a valid PostgreSQL URL ({exc}); expected {EXAMPLE}"
    return None


def redacted(url: str) -> str:
    """`url` with its password replaced by `***` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))
