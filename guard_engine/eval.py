"""Measure a guard on labelled JSONL data: the logic behind `guardline eval`, usable alone.

Records follow data/datasets/README.md (`id`, `source`, `kind`, `prompt`, `response`,
`label`, `lang`). Any `Backend` is run over them one at a time (so latency is the guard's,
not a queue's) and the outcomes are summarized per file and per language: accuracy,
precision, recall, F1, false-positive rate, ROC AUC (from scores, when the guard gives them)
and p50/p99 latency. "unsafe" is the positive class. A guard error is counted apart, never
as a verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from guard_engine.backends.base import Backend
from guard_engine.errors import GuardError
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Label, Mode


@dataclass(frozen=True, slots=True)
class EvalRecord:
    id: str
    source: str  # the file's stem: results are grouped by it
    prompt: str
    response: str | None
    label: Label
    lang: str


@dataclass(frozen=True, slots=True)
class Outcome:
    record: EvalRecord
    predicted: Label | None  # None: the guard failed (see `error`)
    score: float | None
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Metrics:
    n: int  # records with a verdict
    errors: int  # records the guard failed on
    positives: int  # labelled unsafe
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float | None
    precision: float | None  # None when nothing was predicted unsafe
    recall: float | None  # None when no record is unsafe
    f1: float | None
    fpr: float | None  # None when no record is safe
    auc: float | None  # None with one class only, or without scores
    p50_ms: float | None
    p99_ms: float | None


def load_records(path: Path, *, limit: int | None = None) -> list[EvalRecord]:
    """Read a JSONL file; a malformed line is an error naming the file and line."""
    out: list[EvalRecord] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if limit is not None and len(out) >= limit:
                break
            try:
                raw = json.loads(line)
                label = raw["label"]
                if label not in ("safe", "unsafe"):
                    raise ValueError(f"label must be safe or unsafe, not {label!r}")
                prompt = raw["prompt"]
                if not isinstance(prompt, str):
                    raise ValueError("prompt must be a string")
                response = raw.get("response")
                out.append(
                    EvalRecord(
                        id=str(raw.get("id", f"{path.stem}-{lineno - 1}")),
                        source=path.stem,
                        prompt=prompt,
                        response=response if isinstance(response, str) else None,
                        label=label,
                        lang=str(raw.get("lang") or "und"),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return out


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); None: one class."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0  # average 1-based rank of the tie
        i = j + 1
    u = float(ranks[y == 1].sum()) - pos * (pos + 1) / 2.0
    return u / (pos * neg)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def binary_metrics(
    labels: Sequence[int],
    preds: Sequence[int],
    scores: Sequence[float] | None = None,
    latencies_ms: Sequence[float] = (),
    *,
    errors: int = 0,
) -> Metrics:
    """Confusion-matrix metrics with unsafe (1) as the positive class."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    tp = int(((y == 1) & (p == 1)).sum())
    fp = int(((y == 0) & (p == 1)).sum())
    tn = int(((y == 0) & (p == 0)).sum())
    fn = int(((y == 1) & (p == 0)).sum())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    lat = np.asarray(latencies_ms, dtype=np.float64)
    return Metrics(
        n=len(y),
        errors=errors,
        positives=int(y.sum()),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=_ratio(tp + tn, len(y)),
        precision=precision,
        recall=recall,
        f1=f1,
        fpr=_ratio(fp, fp + tn),
        auc=roc_auc(labels, scores) if scores is not None and len(scores) == len(y) else None,
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else None,
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else None,
    )


def metrics_of(outcomes: Sequence[Outcome]) -> Metrics:
    done = [o for o in outcomes if o.predicted is not None]
    labels = [1 if o.record.label == "unsafe" else 0 for o in done]
    preds = [1 if o.predicted == "unsafe" else 0 for o in done]
    scores = [o.score for o in done if o.score is not None]
    return binary_metrics(
        labels,
        preds,
        scores if len(scores) == len(done) else None,
        [o.latency_ms for o in done],
        errors=len(outcomes) - len(done),
    )


async def evaluate(
    backend: Backend,
    policy: CompiledPolicy,
    records: Iterable[EvalRecord],
    *,
    mode: Mode | None = None,
    on_progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Check every record with `backend`, one at a time, and collect the outcomes.

    A record with a response is an output check judged on the response label; otherwise an
    input check judged on the prompt label. A GuardError becomes an outcome with `error` set.
    """
    outcomes: list[Outcome] = []
    for rec in records:
        request = GuardRequest(prompt=rec.prompt, response=rec.response)
        start = time.perf_counter()
        try:
            result = await backend.check(request, policy, mode=mode or policy.mode)
        except GuardError as exc:
            elapsed = (time.perf_counter() - start) * 1000.0
            outcome = Outcome(rec, None, None, elapsed, error=f"{exc.reason}: {exc}")
        else:
            elapsed = (time.perf_counter() - start) * 1000.0
            v = result.verdict
            predicted: Label | None = v.prompt_label
            if rec.response is not None:
                predicted = v.response_label
            outcome = Outcome(rec, predicted, v.score, elapsed)
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(outcome)
    return outcomes


@dataclass(frozen=True, slots=True)
class ReportRow:
    source: str  # file stem, or "all"
    lang: str  # a language code, or "all"
    metrics: Metrics


def summarize(outcomes: Sequence[Outcome]) -> list[ReportRow]:
    """Rows per file (all languages, then each language when a file has several) and, with
    several files, one row over everything."""
    rows: list[ReportRow] = []
    sources = sorted({o.record.source for o in outcomes})
    for source in sources:
        mine = [o for o in outcomes if o.record.source == source]
        rows.append(ReportRow(source, "all", metrics_of(mine)))
        langs = sorted({o.record.lang for o in mine})
        if len(langs) > 1:
            for lang in langs:
                subset = [o for o in mine if o.record.lang == lang]
                rows.append(ReportRow(source, lang, metrics_of(subset)))
    if len(sources) > 1:
        rows.append(ReportRow("all", "all", metrics_of(outcomes)))
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


COLUMNS = ("set", "lang", "n", "err", "acc", "prec", "recall", "f1", "fpr", "auc", "p50ms", "p99ms")


def format_table(rows: Sequence[ReportRow]) -> str:
    """A plain-text table (also valid Markdown) of the report rows."""
    body = [
        (
            r.source,
            r.lang,
            str(r.metrics.n),
            str(r.metrics.errors),
            _fmt(r.metrics.accuracy),
            _fmt(r.metrics.precision),
            _fmt(r.metrics.recall),
            _fmt(r.metrics.f1),
            _fmt(r.metrics.fpr),
            _fmt(r.metrics.auc),
            _fmt(r.metrics.p50_ms, 1),
            _fmt(r.metrics.p99_ms, 1),
        )
        for r in rows
    ]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|" + "|".join("-" * (w + 1) + ("-" if i < 2 else ":") for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(COLUMNS), sep, *(line(b) for b in body)])


def report_json(rows: Sequence[ReportRow]) -> list[dict[str, object]]:
    return [{"set": r.source, "lang": r.lang, **asdict(r.metrics)} for r in rows]
