"""`guardline audit`: read the audit trail ("why was this request blocked?").

guardline audit list   [filters] [--limit N]        newest first, as a table
guardline audit show   ID                            one record as JSON (an id prefix is enough)
guardline audit export [filters] [--out FILE.jsonl]  JSON lines, oldest first (stdout default;
                                                     streamed, so any size of trail works)

Filters: --since/--until (ISO time, or relative: 30s, 15m, 1h, 2d, 1w), --tenant, --route,
--policy (a name matches every version; name@hash one), --verdict, --category, --stage,
--disagreement. The store is --db (an SQLite file, or a postgresql://user:pass@host:port/db
URL), else --config's audit.url (when set) or audit.path, else ./guardline-audit.sqlite3. It is
opened read-only: this is safe beside a running gateway.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, TextIO

import orjson

from proxy.audit.migrations import SchemaTooNew
from proxy.audit.record import AuditRecord
from proxy.audit.storage import (
    AuditStorage,
    AuditStoreUnavailable,
    is_postgres_url,
    open_audit_store,
)

DEFAULT_DB: Final = "guardline-audit.sqlite3"
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, *, now: float | None = None) -> float:
    """Epoch seconds from `1h`-style relative times (before now) or ISO 8601 (naive = UTC)."""
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = relative.groups()
        return (time.time() if now is None else now) - float(amount) * _UNIT_SECONDS[unit]
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO time (2026-11-22T08:00:00Z) nor relative (30m, 1h, 2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def register(parser: argparse.ArgumentParser) -> None:
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--db",
        metavar="PATH|URL",
        help=f"audit database: an SQLite file or a postgresql:// URL (default: {DEFAULT_DB})",
    )
    source.add_argument(
        "--config",
        metavar="CONFIG",
        help="take the database from this config's audit.url, else its audit.path",
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", type=parse_time, metavar="TIME", help="from (1h, ISO time)")
    filters.add_argument("--until", type=parse_time, metavar="TIME", help="before (1h, ISO time)")
    filters.add_argument("--tenant")
    filters.add_argument("--route")
    filters.add_argument("--policy", metavar="NAME[@HASH]")
    filters.add_argument("--verdict", choices=["safe", "unsafe", "skipped"])
    filters.add_argument("--category", help="a category the guard reported (case-insensitive)")
    filters.add_argument("--stage", choices=["input", "output"])
    filters.add_argument(
        "--disagreement", action="store_true", help="only records whose THINK verdict differs"
    )

    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[source, filters], help="records as a table")
    listing.add_argument("--limit", type=int, default=50, help="at most N records (default 50)")
    show = sub.add_parser("show", parents=[source], help="one record as JSON")
    show.add_argument("id", metavar="ID", help="a record id, or a unique prefix of one")
    export = sub.add_parser("export", parents=[source, filters], help="records as JSON lines")
    export.add_argument("--limit", type=int, default=None, help="at most N (newest) records")
    export.add_argument("--out", metavar="FILE", help="write to FILE (default: stdout)")


def run(args: argparse.Namespace) -> int:
    target = _database(args)
    if target is None:
        return 2
    if isinstance(target, Path) and not target.exists():
        print(f"no audit database at {target}", file=sys.stderr)
        return 1
    try:
        store = open_audit_store(target)
    except (AuditStoreUnavailable, SchemaTooNew) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        with store:
            return _answer(store, args)
    except AuditStoreUnavailable as exc:  # the database went away while reading
        print(str(exc), file=sys.stderr)
        return 1


def _answer(store: AuditStorage, args: argparse.Namespace) -> int:
    if args.audit_command == "show":
        return _show(store, args.id)
    if args.audit_command == "export" and args.limit is None:
        return _export(
            store.iter_query(
                since=args.since,
                until=args.until,
                tenant=args.tenant,
                route=args.route,
                policy=args.policy,
                verdict=args.verdict,
                category=args.category,
                stage=args.stage,
                disagreement=True if args.disagreement else None,
            ),
            args.out,
        )
    records = store.query(
        since=args.since,
        until=args.until,
        tenant=args.tenant,
        route=args.route,
        policy=args.policy,
        verdict=args.verdict,
        category=args.category,
        limit=args.limit,
        stage=args.stage,
        disagreement=True if args.disagreement else None,
    )
    if args.audit_command == "list":
        print_table(records, sys.stdout)
        return 0
    return _export(reversed(records), args.out)  # the newest N, written oldest first


def _database(args: argparse.Namespace) -> Path | str | None:
    """An SQLite path or a PostgreSQL URL; None after reporting a bad config."""
    if args.db:
        return args.db if is_postgres_url(args.db) else Path(args.db)
    if args.config:
        from guard_engine.errors import ConfigFileError
        from proxy.config import load_config

        try:
            config = load_config(args.config)
        except ConfigFileError as exc:
            print(str(exc), file=sys.stderr)
            return None
        return config.audit.url or Path(config.audit.path)
    return Path(DEFAULT_DB)


def _show(store: AuditStorage, wanted: str) -> int:
    record = store.get(wanted)
    if record is None:
        matches = store.find_ids(wanted, limit=2)
        if len(matches) != 1:
            problem = "no record" if not matches else "more than one record"
            print(f"{problem} with id {wanted!r}", file=sys.stderr)
            return 1
        record = store.get(matches[0])
    assert record is not None
    sys.stdout.write(orjson.dumps(record.to_json_dict(), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    return 0


def _export(records: Iterable[AuditRecord], out: str | None) -> int:
    """JSON lines in the given order (oldest first), written as they are read."""
    if out is None or out == "-":
        _write_lines(records, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    with open(out, "wb") as sink:
        count = _write_lines(records, sink)
    print(f"{count} records written to {out}", file=sys.stderr)
    return 0


def _write_lines(records: Iterable[AuditRecord], sink: BinaryIO) -> int:
    count = 0
    for record in records:
        sink.write(orjson.dumps(record.to_json_dict(), option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


_HEADERS: Final = (
    "ID", "TIME (UTC)", "TENANT", "ROUTE", "POLICY", "STAGE", "VERDICT", "CATEGORIES", "SCORE",
    "GUARD MS", "THINK",
)  # fmt: skip


def _think_column(record: AuditRecord) -> str:
    if record.think_verdict is None:
        return "-"
    return f"DISAGREE:{record.think_verdict}" if record.disagreement else record.think_verdict


def _cells(record: AuditRecord) -> tuple[str, ...]:
    categories = ",".join(record.categories) or "-"
    if len(categories) > 40:
        categories = categories[:39] + "…"
    verdict = record.verdict + (" (degraded)" if record.degraded else "")
    return (
        record.id,
        datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        record.tenant or "-",
        record.route,
        record.policy,
        record.stage,
        verdict,
        categories,
        "-" if record.score is None else f"{record.score:.2f}",
        f"{record.guard_latency_ms:.1f}",
        _think_column(record),
    )


def print_table(records: Sequence[AuditRecord], out: TextIO) -> None:
    if not records:
        out.write("no matching audit records\n")
        return
    rows: list[tuple[str, ...]] = [_HEADERS, *(_cells(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write(line.rstrip() + "\n")
