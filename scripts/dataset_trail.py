#!/usr/bin/env python3
"""Write an audit trail from labelled data, to try `guardline distill` without traffic.

    .venv/bin/python scripts/dataset_trail.py --out /tmp/trail [--requests 1200]
    .venv/bin/guardline distill --config /tmp/trail/config.yaml --policy dataset

The trail is a *simulation*, and says so in every record's route (`dataset-simulation`): the
dataset labels stand in for the guard model's verdicts. It is made of the shipped head's
held-out rows (the test rows in guard_engine/data/embedded_head.json and the held-out
files), which neither the shipped head nor distill's base data were trained on. Each
sampled row becomes one request, in an order fixed by a hash of its id, one second apart:
- a prompt row: an input decision with the row's label and categories;
- an answer row: an input record marked `skipped` (it carries the prompt, which the data does
  not label on its own, so distill does not use it) and an output decision with the label.
Next to the database it writes config.yaml (a `type: sglang` guard named `nemotron`, whose
address is never called) and the `dataset` policy with `audit: {content: true}`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_embedded_head import heldout  # noqa: E402
from safety_data import Record, load_records  # noqa: E402

from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS  # noqa: E402
from guard_engine.distill.features import hash_unit  # noqa: E402
from proxy.audit.record import AuditRecord, new_record_id  # noqa: E402
from proxy.audit.store import AuditStore  # noqa: E402

START = 1_790_000_000.0
POLICY = "dataset@" + "0" * 8


def decision(rec: Record, when: float, stage: str, verdict: str, content: str) -> AuditRecord:
    return AuditRecord(
        time=when,
        request_id=f"req-{rec.id}",
        trace_id=None,
        tenant=None,
        route="dataset-simulation",
        policy=POLICY,
        stage=stage,
        verdict=verdict,
        categories=rec.taxonomy if verdict == "unsafe" else (),
        score=None,
        guard="nemotron",
        guard_latency_ms=0.0,
        degraded=False,
        content_hash=hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest(),
        content=content,
        id=new_record_id(when),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, required=True, help="a new folder")
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "datasets")
    args = ap.parse_args()

    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text(encoding="utf-8"))
    handwritten = sorted((ROOT / "data" / "handwritten").glob("*.jsonl"))
    data, _, _ = load_records(sorted(args.data_dir.glob("*.jsonl")) + handwritten)
    rows = sorted(heldout(meta, data), key=lambda r: hash_unit("trail/" + r.id))
    rows = rows[: args.requests]

    args.out.mkdir(parents=True, exist_ok=False)
    records: list[AuditRecord] = []
    for i, rec in enumerate(rows):
        when = START + i
        label = "unsafe" if rec.label else "safe"
        if rec.kind == "prompt":
            records.append(decision(rec, when, "input", label, rec.prompt))
        else:
            assert rec.response is not None
            records.append(decision(rec, when, "input", "skipped", rec.prompt))
            records.append(decision(rec, when + 0.5, "output", label, rec.response))
    with AuditStore(args.out / "audit.sqlite3") as store:
        store.insert_many(records)
    (args.out / "dataset.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "dataset",
                "description": "dataset labels as the guard's verdicts (simulation)",
                "audit": {"content": True},
            }
        )
    )
    config = {
        "default_guard": "nemotron",
        "guards": {"nemotron": {"type": "sglang", "base_url": "http://127.0.0.1:9"}},
        "upstreams": {"none": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"name": "dataset-simulation", "upstream": "none", "policy": "dataset.yaml"}],
        "audit": {"path": "audit.sqlite3"},
    }
    (args.out / "config.yaml").write_text(yaml.safe_dump(config))
    prompts = sum(r.kind == "prompt" for r in rows)
    print(
        f"wrote {args.out}: {len(rows)} requests ({prompts} prompts, {len(rows) - prompts} "
        f"answers, {sum(r.label for r in rows)} unsafe)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
