#!/usr/bin/env python3
"""Write guard_engine/data/distill_base.npz: the base data `guardline distill` mixes into every
distilled head (guard_engine/distill/base_data.py), from the embedding cache.

    .venv/bin/python scripts/build_distill_base.py

It reads the same records, splits and training features as scripts/train_embedded_head.py
(its `Data`, in --cached-only mode: nothing is embedded here; run the training script first
to fill .cache/embeddings) and keeps a stratified sample of the `train` split only:

- prompt rows: up to --per-stratum records of each (file, label), every window of each,
  plus the harmless odd shapes (emoji, "ok", "?") the shipped head is trained on;
- response rows: up to --per-stratum training examples (whole answers, prefixes, benign texts
  as answers) of each (file, label), as [context, answer window] rows;
- category rows: up to --per-category unsafe texts per first category, with their
  multi-hot categories in the guard's taxonomy.

Records are picked by a hash of their id, so the sample is the same on every run.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_embedded_head import Data  # noqa: E402

from guard_engine.backends.embedded_head import response_features  # noqa: E402
from guard_engine.distill.base_data import DEFAULT_BASE, BaseData, save_base  # noqa: E402
from guard_engine.distill.features import SHAPES, hash_unit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "datasets")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "embeddings")
    ap.add_argument("--out", type=Path, default=DEFAULT_BASE)
    ap.add_argument("--per-stratum", type=int, default=250)
    ap.add_argument("--per-category", type=int, default=80)
    args = ap.parse_args()
    # The training script's split and feature settings, so "train" means the same rows.
    data = Data(
        argparse.Namespace(
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            threads=1,
            test_fraction=0.2,
            val_fraction=0.1,
            cached_only=True,
        )
    )

    def rank(key: str) -> float:
        return hash_unit("distill-base/" + key)

    # Prompt rows.
    strata: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i in data.prompt_wins:
        rec = data.records[i]
        if data.splits[i] == "train":
            strata[(rec.file, rec.label)].append(i)
    px, py = [data.cache.stack(list(SHAPES))], [0.0] * len(SHAPES)
    prompt_counts: Counter[str] = Counter()
    for (file, label), rows in sorted(strata.items()):
        for i in sorted(rows, key=lambda j: rank(data.records[j].id))[: args.per_stratum]:
            wins = data.prompt_wins[i]
            px.append(data.cache.stack(wins))
            py.extend([float(label)] * len(wins))
            prompt_counts[f"{file}/{'unsafe' if label else 'safe'}"] += 1

    # Response rows.
    answer_strata: dict[tuple[str, int], list[int]] = defaultdict(list)
    for n, (i, ex) in enumerate(data.answers):
        if data.splits[i] == "train":
            answer_strata[(data.records[i].file, ex.label)].append(n)
    rx, ry = [], []
    response_counts: Counter[str] = Counter()
    for (file, label), items in sorted(answer_strata.items()):
        chosen = sorted(items, key=lambda n: rank(f"{data.records[data.answers[n][0]].id}/{n}"))
        for n in chosen[: args.per_stratum]:
            ex = data.answers[n][1]
            rx.append(response_features(data.cache.get(ex.context), data.cache.stack(ex.windows)))
            ry.extend([float(label)] * len(ex.windows))
            response_counts[f"{file}/{'unsafe' if label else 'safe'}"] += 1

    # Category rows: a cap per first category, so the large classes do not fill the sample.
    cx, cy, names = data.category_matrix({"train"})
    by_first: dict[int, list[int]] = defaultdict(list)
    for r in range(cx.shape[0]):
        by_first[int(np.argmax(cy[r]))].append(r)
    keep = sorted(
        r
        for rows in by_first.values()
        for r in sorted(rows, key=lambda r: rank(f"category/{r}"))[: args.per_category]
    )

    base = BaseData(
        prompt_x=np.concatenate(px).astype(np.float32),
        prompt_y=np.asarray(py, np.float32),
        response_x=np.concatenate(rx).astype(np.float32),
        response_y=np.asarray(ry, np.float32),
        category_x=cx[keep],
        category_y=cy[keep],
        category_names=tuple(names),
        meta={
            "command": " ".join([".venv/bin/python scripts/build_distill_base.py", *sys.argv[1:]]),
            "split": "train rows of scripts/train_embedded_head.py's split only",
            "per_stratum": args.per_stratum,
            "per_category": args.per_category,
            "prompt_records": dict(sorted(prompt_counts.items())),
            "response_examples": dict(sorted(response_counts.items())),
            "category_rows": len(keep),
            "data": data.digests,
        },
    )
    save_base(base, args.out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): "
        f"{len(base.prompt_y)} prompt rows ({int(base.prompt_y.sum())} unsafe), "
        f"{len(base.response_y)} response rows ({int(base.response_y.sum())} unsafe), "
        f"{len(keep)} category rows over {len(names)} categories",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
