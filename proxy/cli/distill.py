"""`guardline distill`: train an embedded head for one policy from its audit trail, with the
guard model's own verdicts as labels (docs/distill.md).

guardline distill --policy NAME [--config config.yaml] [--tenant T] [--since T] [--until T]
                  [--out heads/NAME.npz]
                  [--target-agreement 0.99] [--min-agreement 0.95] [--min-decisions 200]
                  [--report-png FILE.png] [--disagreements FILE.jsonl]

Exit 0: the head was written. Exit 2: nothing written, and why (no content in the trail, too
little data, agreement below the floor, a config or policy problem).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from guard_engine.backends.distilled_head import DistillMeta, save_distilled
from guard_engine.errors import ConfigFileError
from guard_engine.policy.compile import load_policy
from guard_engine.policy.compiled import CompiledPolicy
from proxy.audit.record import AuditRecord, iso_time
from proxy.cli.audit import parse_time
from proxy.config import load_config
from proxy.config_schema import GatewayConfig, SGLangGuardConfig
from proxy.distill.pipeline import DistillResult
from proxy.distill.report import ratio
from proxy.distill.trail import TrailSelection


class Refused(Exception):
    """Nothing is written; the message says why (exit 2)."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="config.yaml", help="gateway config (default: %(default)s)"
    )
    parser.add_argument(
        "--policy",
        required=True,
        metavar="NAME[@HASH]",
        help="the policy whose decisions are the labels (a name: every version)",
    )
    parser.add_argument("--tenant", default=None, help="only this tenant's decisions")
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME", help="only decisions from (30d, ISO time)"
    )
    parser.add_argument(
        "--until", type=parse_time, metavar="TIME", help="only decisions before (1d, ISO time)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="head file to write (default: heads/NAME.npz)"
    )
    parser.add_argument(
        "--target-agreement",
        type=float,
        default=0.99,
        help="the cascade thresholds are chosen for this agreement (default 0.99)",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.95,
        help="refuse when held-out local answers agree less (default 0.95)",
    )
    parser.add_argument(
        "--min-decisions",
        type=int,
        default=200,
        help="refuse with fewer usable decisions (default 200)",
    )
    parser.add_argument(
        "--report-png",
        type=Path,
        default=None,
        help="draw agreement vs share answered locally (needs matplotlib)",
    )
    parser.add_argument(
        "--disagreements",
        type=Path,
        default=None,
        help="write the THINK disagreements (held back) as JSON lines",
    )
    parser.add_argument(
        "--trail-weight",
        type=float,
        default=4.0,
        help="a trail row weighs this many base rows (default 4)",
    )
    parser.add_argument("--epochs", type=int, default=400, help="training epochs per head")
    parser.add_argument("--threads", type=int, default=1, help="embedding threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except Refused as exc:
        print(f"guardline distill: {exc}", file=sys.stderr)
        return 2
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if not 0.5 < args.target_agreement <= 1.0 or not 0.0 <= args.min_agreement <= 1.0:
        raise Refused("--target-agreement must be in (0.5, 1] and --min-agreement in [0, 1]")
    config = load_config(args.config)
    name = args.policy.split("@", 1)[0]
    policy = _policy(config, name)
    model_guards = frozenset(
        guard for guard, spec in config.guards.items() if isinstance(spec, SGLangGuardConfig)
    )
    if not model_guards:
        raise Refused(
            f"{args.config} configures no model guard (type: sglang): nothing to learn from"
        )

    from proxy.audit.storage import AuditStoreUnavailable
    from proxy.distill.trail import TrailUnavailable, read_trail, select_decisions

    try:
        trail = read_trail(
            config.audit,
            policy=args.policy,
            tenant=args.tenant,
            since=args.since,
            until=args.until,
        )
        # A PostgreSQL store is read as the records are consumed: an outage mid-read refuses
        # the same way as one at the start.
        selection = select_decisions(trail, model_guards)
    except (TrailUnavailable, AuditStoreUnavailable) as exc:
        raise Refused(f"{exc}, in {args.config}") from None
    if args.disagreements is not None:
        _write_jsonl(args.disagreements, selection.disagreements)
    if not selection.decisions and (selection.without_content or not policy.audit.content):
        raise Refused(
            f"the audit records of policy {name!r} keep no content ({selection.without_content} "
            "model-guard decisions with only their hashes): distill needs the checked texts. Set "
            f"`audit: {{content: true}}` in {policy.source}, let traffic flow, then run "
            "distill again"
        )
    if not policy.audit.content:
        print(
            f"warning: {policy.source} has audit.content off; only older records kept content",
            file=sys.stderr,
        )
    if len(selection.decisions) < args.min_decisions:
        raise Refused(
            f"too little data: {len(selection.decisions)} usable model-guard decisions of policy "
            f"{args.policy!r}{_tenant(args.tenant)} (of {selection.read} records read"
            + "".join(f"; {n} {reason}" for reason, n in selection.skipped.most_common(3))
            + f"), --min-decisions is {args.min_decisions}"
        )

    from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS, load_heads
    from guard_engine.distill.base_data import load_base
    from guard_engine.distill.embedding import Embedder
    from guard_engine.distill.fit import FitSettings
    from proxy.distill.pipeline import distill
    from proxy.distill.report import print_report, write_png

    settings = FitSettings(
        trail_weight=args.trail_weight,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
    )
    result = distill(
        selection.decisions,
        load_base(),
        Embedder(threads=args.threads, progress=not args.quiet),
        target=args.target_agreement,
        settings=settings,
        baseline=load_heads(DEFAULT_WEIGHTS),
    )
    newest = selection.decisions[-1].policy
    print_report(sys.stdout, newest, args.tenant, selection, result)
    if args.report_png is not None and write_png(args.report_png, result, args.target_agreement):
        print(f"wrote {args.report_png}")
    local = result.measured.local["overall"]
    if local.agreement is None:
        raise Refused(
            "no score band reaches the target agreement: on the held-out decisions the head "
            f"answers nothing locally at --target-agreement {args.target_agreement:g}; "
            "no head written"
        )
    if local.agreement < args.min_agreement:
        raise Refused(
            f"held-out agreement of the local answers is {100 * local.agreement:.1f}%, below "
            f"the floor --min-agreement {100 * args.min_agreement:g}%: no head written"
        )
    out = args.out if args.out is not None else Path("heads") / f"{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = save_distilled(result.heads, _meta(args, selection, result, newest), out)
    print(f"wrote {out} (head {fingerprint}, policy {newest})")
    return 0


def _policy(config: GatewayConfig, name: str) -> CompiledPolicy:
    """The policy named `name` among the config's routes (and their shadow policies)."""
    seen: dict[str, CompiledPolicy] = {}
    for route in config.routes:
        policy = load_policy(route.policy)
        seen[policy.name] = policy
        if policy.shadow is not None:
            shadow = load_policy(policy.shadow)
            seen.setdefault(shadow.name, shadow)
    if name not in seen:
        known = ", ".join(sorted(seen)) or "none"
        raise Refused(f"no route of the config uses a policy named {name!r} (policies: {known})")
    return seen[name]


def _tenant(tenant: str | None) -> str:
    return "" if tenant is None else f" for tenant {tenant!r}"


def _write_jsonl(path: Path, records: list[AuditRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for rec in records:
            f.write(orjson.dumps(rec.to_json_dict()) + b"\n")
    print(f"wrote {len(records)} THINK disagreements to {path}", file=sys.stderr)


def _meta(
    args: argparse.Namespace, selection: TrailSelection, result: DistillResult, policy_ref: str
) -> DistillMeta:
    decisions = selection.decisions
    measured = result.measured
    agreement: dict[str, float] = {}
    for key, pair in measured.head_alone.items():
        value = ratio(pair)
        if value is not None:
            agreement[f"head:{key}"] = value
    for key, local in measured.local.items():
        if local.agreement is not None:
            agreement[f"local:{key}"] = local.agreement
    for cat, pair in measured.categories.items():
        value = ratio(pair)
        if value is not None:
            agreement[f"category:{cat}"] = value
    split = result.split
    counts = {
        "decisions": len(decisions),
        "train": len(split.train),
        "calibration": len(split.calibration),
        "heldout": len(split.heldout),
        "input": sum(d.stage == "input" for d in decisions),
        "output": sum(d.stage == "output" for d in decisions),
        "unsafe": sum(d.label for d in decisions),
        "disagreements": len(selection.disagreements),
        "records_read": selection.read,
        **result.rows,
    }
    versions: dict[str, int] = {}
    for d in decisions:
        versions[d.policy] = versions.get(d.policy, 0) + 1
    return DistillMeta(
        policy=policy_ref,
        tenant=args.tenant,
        window=(iso_time(decisions[0].time), iso_time(decisions[-1].time)),
        counts=counts,
        agreement=agreement,
        prompt_thresholds=result.thresholds["input"],
        response_thresholds=result.thresholds["output"],
        target_agreement=args.target_agreement,
        local_share={key: local.share for key, local in measured.local.items()},
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        extra={
            "policy_versions": versions,
            "split": {
                "rule": "by request (first decision's time): oldest train, then calibration "
                "(thresholds chosen), newest held-out (measured)",
                "calibration_from": _iso_or_none(split.calibration_from),
                "heldout_from": _iso_or_none(split.heldout_from),
            },
            "skipped": dict(selection.skipped),
            "notes": result.notes,
            "curve": [list(point) for point in measured.curve],
            "shipped_head": _baseline(result),
            "settings": {
                "trail_weight": args.trail_weight,
                "epochs": args.epochs,
                "seed": args.seed,
                "min_agreement": args.min_agreement,
            },
        },
    )


def _baseline(result: DistillResult) -> dict[str, float | None] | None:
    """The shipped head on the same held-out decisions, thresholds chosen the same way."""
    local, alone = result.measured.baseline_local, result.measured.baseline_head_alone
    if local is None or alone is None:
        return None
    return {"head_alone": ratio(alone), "local_share": local.share, "local": local.agreement}


def _iso_or_none(epoch: float) -> str | None:
    return None if epoch == float("inf") else iso_time(epoch)
