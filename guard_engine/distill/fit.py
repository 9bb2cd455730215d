"""Fit a distilled head set: the trail's labelled rows plus the shared base data.

Same architecture and training math as the shipped head (guard_engine/distill/training.py):
MLP prompt and response heads, a one-vs-rest logistic category head. Each trail row weighs
`trail_weight` base rows, because the trail is what this policy's traffic looks like and the
guard model's own judgement; the base rows are there so that a trail without, say, any weapons
question does not teach the head that weapons are fine. The classes are then given equal
total weight (the thresholds are chosen afterwards on held-out decisions, so the prior the
head learns does not decide what is answered locally).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guard_engine.backends.embedded_head import CategoryHead, HeadSet
from guard_engine.distill.base_data import BaseData
from guard_engine.distill.training import train_logistic_multi, train_mlp

F32 = npt.NDArray[np.float32]
# A category the guard named fewer times than this in the training decisions is not learned
# from the trail (the base data may still teach it).
MIN_TRAIL_CATEGORY_ROWS = 5


@dataclass(frozen=True, slots=True)
class Rows:
    x: F32  # (n, dim)
    y: F32  # (n,) 1 unsafe


@dataclass(frozen=True, slots=True)
class CategoryRows:
    x: F32  # (n, 384): one row per unsafe decision with categories
    labels: list[tuple[str, ...]]  # the guard's categories of each row


@dataclass(frozen=True, slots=True)
class FitSettings:
    trail_weight: float = 4.0
    hidden: int = 64
    epochs: int = 400
    l2: float = 1e-2
    lr: float = 5e-3
    seed: int = 0
    progress: bool = True


def fit_heads(
    base: BaseData,
    prompt: Rows,
    response: Rows,
    categories: CategoryRows,
    settings: FitSettings,
) -> HeadSet:
    from tqdm import tqdm  # type: ignore[import-untyped]

    with tqdm(
        total=2 * settings.epochs,
        desc="train",
        unit="epoch",
        file=sys.stderr,
        mininterval=1.0,
        disable=not settings.progress,
    ) as bar:
        heads = []
        for base_x, base_y, rows in (
            (base.prompt_x, base.prompt_y, prompt),
            (base.response_x, base.response_y, response),
        ):
            x, y, w = _weighted(base_x, base_y, rows, settings.trail_weight)
            head, _, _ = train_mlp(
                x,
                y,
                w,
                hidden=settings.hidden,
                l2=settings.l2,
                epochs=settings.epochs,
                lr=settings.lr,
                seed=settings.seed,
                on_epoch=lambda: bar.update(1),
            )
            heads.append(head)
    return HeadSet(
        prompt=heads[0], response=heads[1], categories=_category_head(base, categories, settings)
    )


def _weighted(base_x: F32, base_y: F32, rows: Rows, trail_weight: float) -> tuple[F32, F32, F32]:
    x = np.concatenate([base_x, rows.x]).astype(np.float32)
    y = np.concatenate([base_y, rows.y]).astype(np.float32)
    w = np.concatenate(
        [np.ones(len(base_y), np.float32), np.full(len(rows.y), trail_weight, np.float32)]
    )
    for cls in (0.0, 1.0):
        mask = y == cls
        if mask.any():
            w[mask] *= 0.5 * len(y) / float(w[mask].sum())
    return x, y, w


def category_names(base: BaseData, categories: CategoryRows) -> tuple[str, ...]:
    """The base data's categories, plus every category the guard named often enough."""
    counts: dict[str, int] = {}
    for labels in categories.labels:
        for name in labels:
            counts[name] = counts.get(name, 0) + 1
    extra = sorted(
        n
        for n, c in counts.items()
        if c >= MIN_TRAIL_CATEGORY_ROWS and n not in base.category_names
    )
    return (*base.category_names, *extra)


def _category_head(
    base: BaseData, categories: CategoryRows, settings: FitSettings
) -> CategoryHead | None:
    names = category_names(base, categories)
    if not names:
        return None
    index = {n: i for i, n in enumerate(names)}
    base_y = np.zeros((len(base.category_y), len(names)), np.float32)
    base_y[:, : len(base.category_names)] = base.category_y
    trail_y = np.zeros((len(categories.labels), len(names)), np.float32)
    for r, labels in enumerate(categories.labels):
        for name in labels:
            if name in index:
                trail_y[r, index[name]] = 1.0
    # The trail's rows count `trail_weight` times, by repetition (the category trainer weighs
    # classes, not rows).
    repeat = max(1, round(settings.trail_weight))
    x = np.concatenate([base.category_x, *([categories.x] * repeat)]).astype(np.float32)
    y = np.concatenate([base_y, *([trail_y] * repeat)]).astype(np.float32)
    if len(x) == 0:
        return None
    w, b = train_logistic_multi(x, y, l2=1e-3, lr=0.05, epochs=300, seed=settings.seed)
    return CategoryHead(w=w, b=b, names=names)
