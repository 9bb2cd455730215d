#!/usr/bin/env python3
"""How many checks a cascade could answer locally: the shipped head on its held-out rows, with
the dataset labels standing in for the model guard's verdicts.

    .venv/bin/python scripts/eval_cascade.py [--targets 0.99,0.97]

The held-out rows are those scripts/eval_embedded_head.py measures (the test rows listed in
guard_engine/data/embedded_head.json, the held-out files, the hand-written probes), scored
exactly as the runtime guard scores them, from embeddings in .cache/embeddings (records with
a text not embedded there are left out and counted; the cache is never written).

The rows are cut in two halves by a hash of their normalized prompt (so a prompt and its
answers stay together). For each target agreement the cascade thresholds are chosen on one
half (guard_engine/distill/thresholds.py, the code `guardline distill` uses) and measured on
the other, then the other way round: the share answered locally is the share of model-guard
calls (GPU calls) saved, and the agreement is that of the local answers with the labels.
Prints a Markdown table (docs/guard-accuracy.md, "Cascade: checks answered locally").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from embedding_cache import EmbeddingCache  # noqa: E402
from eval_embedded_head import heldout  # noqa: E402
from safety_data import load_records, normalized  # noqa: E402

from guard_engine.backends.embedded_head import (  # noqa: E402
    DEFAULT_WEIGHTS,
    context_text,
    load_heads,
    response_features,
    text_windows,
)
from guard_engine.distill.features import hash_unit  # noqa: E402
from guard_engine.distill.thresholds import (  # noqa: E402
    LocalAnswers,
    choose_thresholds,
    local_answers,
)

F32 = npt.NDArray[np.float32]
STAGES = {"prompt": "input", "response": "output"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "datasets")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "embeddings")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--targets", default="0.99,0.97")
    args = ap.parse_args()
    targets = [float(t) for t in args.targets.split(",")]

    meta = json.loads(args.weights.with_suffix(".json").read_text(encoding="utf-8"))
    heads = load_heads(args.weights)
    handwritten = sorted((ROOT / "data" / "handwritten").glob("*.jsonl"))
    data, _, _ = load_records(sorted(args.data_dir.glob("*.jsonl")) + handwritten)
    probes, _, _ = load_records(sorted((ROOT / "benchmarks").glob("*_probe.jsonl")))
    records = heldout(meta, data) + probes
    cache = EmbeddingCache(args.cache_dir)
    model = cache.model()

    def count(t: str) -> int:
        return int(model.token_count(t, True))

    # kind -> [(score, label, half)]
    rows: dict[str, list[tuple[float, int, int]]] = {"prompt": [], "response": []}
    left_out = 0
    for rec in records:
        half = int(hash_unit("cascade-eval/" + normalized(rec.prompt)) < 0.5)
        if rec.kind == "prompt":
            wins = text_windows(rec.prompt, count)
            if cache.missing(wins):
                left_out += 1
                continue
            score = float(heads.prompt.scores(cache.stack(wins)).max())
        else:
            assert rec.response is not None
            ctx = context_text(rec.prompt)
            wins = text_windows(rec.response, count)
            if cache.missing([ctx, *wins]):
                left_out += 1
                continue
            feats = response_features(cache.get(ctx), cache.stack(wins))
            score = float(heads.response.scores(feats).max())
        rows[rec.kind].append((score, rec.label, half))

    print(
        f"held-out rows scored: {len(rows['prompt'])} input checks "
        f"({sum(r[1] for r in rows['prompt'])} unsafe), {len(rows['response'])} output checks "
        f"({sum(r[1] for r in rows['response'])} unsafe); {left_out} left out (not in the cache)\n"
    )
    print(
        "| target | stage | thresholds low / high (fold A; fold B) | answered locally "
        "(GPU calls saved) | agreement of local answers |"
    )
    print("|---|---|---|---|---|")
    for target in targets:
        total = LocalAnswers(0, 0, 0)
        for kind, stage in STAGES.items():
            arr = np.asarray(rows[kind], np.float64)
            scores, labels, half = arr[:, 0].astype(np.float32), arr[:, 1], arr[:, 2]
            measured = LocalAnswers(0, 0, 0)
            chosen = []
            for choose_on in (0, 1):
                pick, test = half == choose_on, half != choose_on
                t = choose_thresholds(scores[pick], labels[pick].astype(np.float32), target)
                chosen.append(f"{t.low:.3f} / {t.high:.3f}")
                measured = measured + local_answers(
                    scores[test], labels[test].astype(np.float32), t
                )
            total = total + measured
            print(
                f"| {target:.0%} | {stage} | {'; '.join(chosen)} | {_pct(measured.share)} "
                f"| {_pct(measured.agreement)} |"
            )
        print(f"| {target:.0%} | all checks | | {_pct(total.share)} | {_pct(total.agreement)} |")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
