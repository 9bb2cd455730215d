"""`guardline eval DATA.jsonl [...]`: measure a guard on labelled data, per file and language.

Prints accuracy, precision, recall, F1, false-positive rate, ROC AUC and p50/p99 latency
(`unsafe` is the positive class), with a progress bar on stderr. `--heldout` keeps only the
records the embedded guard's head was not trained on (its split rule ships with its weights),
which is how docs/guard-accuracy.md is produced. Exit status: 0, or 2 when it cannot run or
when no record got a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from guard_engine.backends.base import Backend
from guard_engine.errors import GuardEngineError
from guard_engine.eval import (
    EvalRecord,
    Outcome,
    evaluate,
    format_table,
    load_records,
    report_json,
    summarize,
)
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import Mode

DEFAULT_POLICY = Path("policies/default.yaml")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", type=Path, help="labelled JSONL file(s)")
    parser.add_argument("--policy", type=Path, help="policy file (default: policies/default.yaml)")
    parser.add_argument("--guard", help="guard name from the config (default: the policy's)")
    parser.add_argument("--config", type=Path, help="config.yaml that defines --guard")
    parser.add_argument("--mode", choices=["binary", "categories", "think"], help="override mode")
    parser.add_argument("--limit", type=int, help="at most N records per file")
    parser.add_argument(
        "--threshold", type=float, help="override the policy's score threshold (scoring guards)"
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="only records the embedded head was not trained on: the test rows listed with "
        "its weights (matched by file name and record id, as in data/datasets) and files it "
        "never trained on",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        records = _records(args)
        policy = _policy(args.policy)
        if args.threshold is not None:
            if not 0.0 <= args.threshold <= 1.0:
                raise ValueError("--threshold must be between 0 and 1")
            policy = dataclasses.replace(policy, threshold=args.threshold)
        backend, owned = _backend(args.guard, args.config, policy)
    except (GuardEngineError, OSError, ValueError) as exc:
        print(f"guardline eval: {exc}", file=sys.stderr)
        return 2
    outcomes = asyncio.run(_run(backend, owned, policy, records, args.mode))
    rows = summarize(outcomes)
    if args.json:
        print(orjson.dumps(report_json(rows), option=orjson.OPT_INDENT_2).decode())
    else:
        label = f"guard {backend.name} ({backend.model}), policy {policy.ref}"
        print(f"{label}, threshold {policy.threshold:g}\n")
        print(format_table(rows))
    errors = [o for o in outcomes if o.error is not None]
    if errors:
        print(f"{len(errors)} guard errors, first: {errors[0].error}", file=sys.stderr)
    # Nothing measured (every check failed, or no records) is a failed run, not a report.
    return 2 if len(errors) == len(outcomes) else 0


def _records(args: argparse.Namespace) -> list[EvalRecord]:
    keep: Callable[[EvalRecord], bool] = lambda _r: True  # noqa: E731
    if args.heldout:
        keep = _heldout_filter()
    records: list[EvalRecord] = []
    for path in args.data:
        records.extend(r for r in load_records(path, limit=None) if keep(r))
    if args.limit is not None:
        per_file: dict[str, int] = {}
        limited: list[EvalRecord] = []
        for rec in records:
            if per_file.get(rec.source, 0) < args.limit:
                per_file[rec.source] = per_file.get(rec.source, 0) + 1
                limited.append(rec)
        records = limited
    return records


def _heldout_filter() -> Callable[[EvalRecord], bool]:
    """Records the embedded head never trained on: the test rows its metadata lists (by file
    name and row number, as in data/datasets), files it held out entirely, and files it
    never read (the hand-written probes in benchmarks/)."""
    from guard_engine.backends.embedded_head import DEFAULT_METADATA

    meta = json.loads(DEFAULT_METADATA.read_text(encoding="utf-8"))
    test_rows = {name: set(rows) for name, rows in meta["test_rows"].items()}
    trained = set(meta["data"]) - {f"{stem}.jsonl" for stem in meta["held_out_files"]}

    def keep(rec: EvalRecord) -> bool:
        name = f"{rec.source}.jsonl"
        if name not in trained:
            return True
        try:
            row = int(rec.id.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            return False
        return row in test_rows.get(name, set())

    return keep


def _policy(path: Path | None) -> CompiledPolicy:
    from guard_engine.policy.compile import load_policy

    if path is None and not DEFAULT_POLICY.exists():
        return _builtin_default_policy()
    return load_policy(path or DEFAULT_POLICY)


def _builtin_default_policy() -> CompiledPolicy:
    """The schema's defaults, for running outside a checkout that has policies/."""
    from guard_engine.policy.compile import compile_policy
    from guard_engine.policy.schema import PolicyFile

    raw = PolicyFile(name="default", description="built-in defaults of guardline eval")
    return compile_policy(raw, "<built-in>")


def _backend(
    guard: str | None, config: Path | None, policy: CompiledPolicy
) -> tuple[Backend, list[Backend]]:
    """The guard to measure, and every backend built on the way (all closed at the end)."""
    name = guard or policy.guard
    if config is None and Path("config.yaml").exists():
        config = Path("config.yaml")
    if config is None:
        if name not in (None, "local"):
            raise ValueError(f"guard {name!r} needs --config (only 'local' is built in)")
        from guard_engine.backends.embedded import EmbeddedBackend

        local = EmbeddedBackend(name="local")
        return local, [local]
    from proxy.config import load_config
    from proxy.guards import build_backends

    cfg = load_config(config)
    backends = build_backends(cfg)
    name = name or cfg.default_guard
    if name not in backends:
        raise ValueError(f"unknown guard {name!r}; known: {', '.join(sorted(cfg.guards))}")
    return backends[name], list({id(b): b for b in backends.values()}.values())


async def _run(
    backend: Backend,
    owned: list[Backend],
    policy: CompiledPolicy,
    records: list[EvalRecord],
    mode: Mode | None,
) -> list[Outcome]:
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar = tqdm(total=len(records), file=sys.stderr, unit="rec", dynamic_ncols=True)
    try:
        return await evaluate(
            backend, policy, records, mode=mode, on_progress=lambda _o: bar.update()
        )
    finally:
        bar.close()
        for b in owned:
            await b.aclose()
