"""The WHERE clause of an audit query, for either store's SQL dialect.

Both stores answer the same questions with the same filters; only the placeholder and the way
a JSON/array column of categories is searched differ, so those are the dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Dialect:
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    has_category: str  # a condition true when `categories` holds the parameter (any case)


SQLITE: Final = Dialect(
    placeholder="?",
    has_category=(
        "EXISTS (SELECT 1 FROM json_each(audit.categories) WHERE lower(value) = lower(?))"
    ),
)
POSTGRES: Final = Dialect(
    placeholder="%s",
    has_category="EXISTS (SELECT 1 FROM unnest(audit.categories) c WHERE lower(c) = lower(%s))",
)


def where_clause(
    dialect: Dialect,
    since: float | None,
    until: float | None,
    tenant: str | None,
    route: str | None,
    policy: str | None,
    verdict: str | None,
    category: str | None,
    stage: str | None,
    disagreement: bool | None,
) -> tuple[str, list[Any]]:
    """(" WHERE ..." or "", parameters) for the filters that are set.

    `since` is inclusive, `until` exclusive; `policy` is `name@hash8` (that version) or a bare
    name (every version); `category` matches case-insensitively.
    """
    p = dialect.placeholder
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"time >= {p}")
        params.append(since)
    if until is not None:
        where.append(f"time < {p}")
        params.append(until)
    for column, value in (("tenant", tenant), ("route", route), ("verdict", verdict)):
        if value is not None:
            where.append(f"{column} = {p}")
            params.append(value)
    if stage is not None:
        where.append(f"stage = {p}")
        params.append(stage)
    if policy is not None:
        if "@" in policy:
            where.append(f"policy = {p}")
            params.append(policy)
        else:
            # A range on the indexed column: every `name@<hash>` sorts in [`name@`, `nameA`)
            # because "A" is the character right after "@".
            where.append(f"policy >= {p} AND policy < {p}")
            params.extend([policy + "@", policy + "A"])
    if category is not None:
        where.append(dialect.has_category)
        params.append(category)
    if disagreement is not None:
        where.append(f"disagreement = {p}")
        params.append(disagreement if dialect is POSTGRES else int(disagreement))
    return (" WHERE " + " AND ".join(where) if where else ""), params


def id_prefix_pattern(prefix: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') matching ids that start with `prefix` literally."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
