"""From labelled decisions to a head and its measurements (the part of `guardline distill`
between reading the trail and writing the file).

1. Split by request and time (split.py): train | calibration | held-out, oldest to newest.
2. Embed every text as the runtime guard does; train the heads on the train part plus the
   shipped base data (guard_engine/distill/fit.py).
3. Score the calibration part and choose each stage's thresholds there for the target
   agreement (guard_engine/distill/thresholds.py).
4. Score the held-out part and measure: the head alone (its own 0.5 threshold) per label and
   stage, the cascade's local answers at the chosen thresholds, the category head.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from guard_engine.backends.distilled_head import MODEL_GUARD_ONLY, Thresholds
from guard_engine.backends.embedded import CATEGORY_MIN_P
from guard_engine.backends.embedded_head import HeadSet, context_text, response_features
from guard_engine.distill.base_data import BaseData
from guard_engine.distill.embedding import Embedder
from guard_engine.distill.features import (
    PROMPT_TRAIN_CHARS,
    RESPONSE_TRAIN_CHARS,
)
from guard_engine.distill.fit import CategoryRows, FitSettings, Rows, fit_heads
from guard_engine.distill.thresholds import LocalAnswers, choose_thresholds, local_answers
from proxy.distill.split import TimeSplit, split_by_time
from proxy.distill.trail import Decision

F32 = npt.NDArray[np.float32]
STAGES = ("input", "output")
# Fewer calibration decisions of a stage than this: its thresholds cannot be chosen with any
# confidence, so that stage answers nothing locally (stated in the report).
MIN_CALIBRATION_PER_STAGE = 20
CURVE_TARGETS = tuple(float(t) for t in np.round(np.linspace(0.90, 1.0, 21), 3))


@dataclass(frozen=True, slots=True)
class Scored:
    """The head's view of a set of decisions of one stage."""

    scores: F32
    labels: F32
    decisions: list[Decision]


@dataclass(slots=True)
class Measurements:
    head_alone: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (agree, n)
    local: dict[str, LocalAnswers] = field(default_factory=dict)  # stage | overall
    categories: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (agree, n)
    # (target, share answered locally, agreement of the local answers) on the held-out part,
    # thresholds chosen on the calibration part for each target: the report's PNG.
    curve: list[tuple[float, float, float | None]] = field(default_factory=list)
    # The shipped head under the same rule (thresholds chosen on calibration, measured on the
    # held-out part): what distilling bought over not distilling.
    baseline_local: LocalAnswers | None = None
    baseline_head_alone: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class DistillResult:
    heads: HeadSet
    split: TimeSplit[Decision]
    thresholds: dict[str, Thresholds]
    notes: list[str]  # what was done differently because data was small
    measured: Measurements
    rows: dict[str, int]  # training rows by kind


def distill(
    decisions: Sequence[Decision],
    base: BaseData,
    embedder: Embedder,
    *,
    target: float,
    settings: FitSettings,
    calibration: float = 0.2,
    heldout: float = 0.2,
    baseline: HeadSet | None = None,
) -> DistillResult:
    split = split_by_time(decisions, calibration=calibration, heldout=heldout)
    _embed_all(decisions, embedder)
    prompt_rows, response_rows, category_rows = _training_rows(split.train, embedder)
    heads = fit_heads(base, prompt_rows, response_rows, category_rows, settings)

    notes: list[str] = []
    thresholds: dict[str, Thresholds] = {}
    calibrated: dict[str, Scored] = {}
    for stage in STAGES:
        calibrated[stage] = _score(
            heads, [d for d in split.calibration if d.stage == stage], embedder
        )
        n = calibrated[stage].scores.size
        if n < MIN_CALIBRATION_PER_STAGE:
            thresholds[stage] = MODEL_GUARD_ONLY
            notes.append(
                f"{stage}: {n} calibration decisions (< {MIN_CALIBRATION_PER_STAGE}): "
                "thresholds not chosen, this stage is answered by the model guard"
            )
        else:
            thresholds[stage] = choose_thresholds(
                calibrated[stage].scores, calibrated[stage].labels, target
            )
    held = {
        stage: _score(heads, [d for d in split.heldout if d.stage == stage], embedder)
        for stage in STAGES
    }
    measured = _measure(heads, held, thresholds, embedder)
    if baseline is not None:
        _measure_baseline(baseline, split, measured, target, embedder)
    for t in CURVE_TARGETS:
        total = LocalAnswers(0, 0, 0)
        for stage in STAGES:
            if calibrated[stage].scores.size < MIN_CALIBRATION_PER_STAGE:
                chosen = MODEL_GUARD_ONLY
            else:
                chosen = choose_thresholds(calibrated[stage].scores, calibrated[stage].labels, t)
            total = total + local_answers(held[stage].scores, held[stage].labels, chosen)
        measured.curve.append((t, total.share, total.agreement))
    rows = {
        "trail_prompt_rows": len(prompt_rows.y),
        "trail_response_rows": len(response_rows.y),
        "trail_category_rows": len(category_rows.labels),
        "base_prompt_rows": len(base.prompt_y),
        "base_response_rows": len(base.response_y),
        "base_category_rows": len(base.category_y),
    }
    return DistillResult(heads, split, thresholds, notes, measured, rows)


def _measure_baseline(
    baseline: HeadSet,
    split: TimeSplit[Decision],
    measured: Measurements,
    target: float,
    embedder: Embedder,
) -> None:
    local = LocalAnswers(0, 0, 0)
    agree = n = 0
    for stage in STAGES:
        cal = _score(baseline, [d for d in split.calibration if d.stage == stage], embedder)
        held = _score(baseline, [d for d in split.heldout if d.stage == stage], embedder)
        chosen = (
            choose_thresholds(cal.scores, cal.labels, target)
            if cal.scores.size >= MIN_CALIBRATION_PER_STAGE
            else MODEL_GUARD_ONLY
        )
        local = local + local_answers(held.scores, held.labels, chosen)
        agree += int(np.sum((held.scores >= 0.5) == (held.labels == 1)))
        n += int(held.scores.size)
    measured.baseline_local = local
    measured.baseline_head_alone = (agree, n)


def _embed_all(decisions: Sequence[Decision], embedder: Embedder) -> None:
    texts: list[str] = []
    for d in decisions:
        if d.response is None:
            texts += embedder.windows(d.prompt)
            texts += embedder.windows(d.prompt[:PROMPT_TRAIN_CHARS])
        else:
            texts.append(context_text(d.prompt))
            texts += embedder.windows(d.response)
            texts += embedder.windows(d.response[:RESPONSE_TRAIN_CHARS])
    embedder.embed(texts)


def _training_rows(
    train: Sequence[Decision], embedder: Embedder
) -> tuple[Rows, Rows, CategoryRows]:
    """Every window of a decision carries its label (texts cut as for the shipped head)."""
    px: list[F32] = [np.zeros((0, 384), np.float32)]
    py: list[float] = []
    rx: list[F32] = [np.zeros((0, 768), np.float32)]
    ry: list[float] = []
    cx: list[F32] = [np.zeros((0, 384), np.float32)]
    labels: list[tuple[str, ...]] = []
    for d in train:
        if d.response is None:
            windows = embedder.stack(embedder.windows(d.prompt[:PROMPT_TRAIN_CHARS]))
            px.append(windows)
            py += [float(d.label)] * len(windows)
        else:
            windows = embedder.stack(embedder.windows(d.response[:RESPONSE_TRAIN_CHARS]))
            context = embedder.vector(context_text(d.prompt))
            rx.append(response_features(context, windows))
            ry += [float(d.label)] * len(windows)
        if d.label == 1 and d.categories:
            mean = windows.mean(axis=0)
            cx.append((mean / max(1e-6, float(np.linalg.norm(mean)))).reshape(1, -1))
            labels.append(d.categories)
    return (
        Rows(np.concatenate(px), np.asarray(py, np.float32)),
        Rows(np.concatenate(rx), np.asarray(ry, np.float32)),
        CategoryRows(np.concatenate(cx).astype(np.float32), labels),
    )


def _windows_and_scores(heads: HeadSet, d: Decision, embedder: Embedder) -> tuple[F32, F32]:
    """A decision's window embeddings and their scores, as the runtime guard computes them."""
    if d.response is None:
        windows = embedder.stack(embedder.windows(d.prompt))
        return windows, heads.prompt.scores(windows)
    windows = embedder.stack(embedder.windows(d.response))
    context = embedder.vector(context_text(d.prompt))
    return windows, heads.response.scores(response_features(context, windows))


def _score(heads: HeadSet, decisions: list[Decision], embedder: Embedder) -> Scored:
    scores = [float(_windows_and_scores(heads, d, embedder)[1].max()) for d in decisions]
    return Scored(
        np.asarray(scores, np.float32),
        np.asarray([d.label for d in decisions], np.float32),
        decisions,
    )


def _measure(
    heads: HeadSet, held: dict[str, Scored], thresholds: dict[str, Thresholds], embedder: Embedder
) -> Measurements:
    out = Measurements()
    tally: Counter[str] = Counter()
    for stage, scored in held.items():
        said = (scored.scores >= 0.5).astype(np.float32)
        agree = said == scored.labels
        for key, mask in (
            ("overall", np.ones_like(agree)),
            (stage, np.ones_like(agree)),
            ("guard safe", scored.labels == 0),
            ("guard unsafe", scored.labels == 1),
        ):
            tally[key + "/agree"] += int(np.sum(agree & mask))
            tally[key + "/n"] += int(np.sum(mask))
        out.local[stage] = local_answers(scored.scores, scored.labels, thresholds[stage])
    out.local["overall"] = out.local["input"] + out.local["output"]
    for key in ("overall", "guard safe", "guard unsafe", *STAGES):
        out.head_alone[key] = (tally[key + "/agree"], tally[key + "/n"])
    out.categories = _category_agreement(heads, held, embedder)
    return out


def _category_agreement(
    heads: HeadSet, held: dict[str, Scored], embedder: Embedder
) -> dict[str, tuple[int, int]]:
    """Per category the guard named on a held-out unsafe decision: how often the category
    head names it too (read on the decision's highest-scoring window, as at run time)."""
    if heads.categories is None:
        return {}
    names = heads.categories.names
    agree: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for scored in held.values():
        for d in scored.decisions:
            if d.label != 1 or not d.categories:
                continue
            windows, scores = _windows_and_scores(heads, d, embedder)
            probs = heads.categories.probs(windows[int(scores.argmax())].reshape(1, -1))[0]
            picked = {n for n, p in zip(names, probs.tolist(), strict=True) if p >= CATEGORY_MIN_P}
            picked = picked or {names[int(probs.argmax())]}
            for name in d.categories:
                seen[name] += 1
                agree[name] += int(name in picked)
    return {name: (agree[name], seen[name]) for name in sorted(seen)}
