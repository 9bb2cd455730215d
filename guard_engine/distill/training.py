"""Training math for the embedded guard's heads (numpy only): used by
scripts/train_embedded_head.py for the shipped head and by `guardline distill` for a
policy's own head, so both are trained by the same code.

A one-hidden-layer MLP trained by full-batch Adam on class-weighted log loss with L2 and early
stopping, and the folding of input standardization and a projection into its first layer, so
the saved head takes raw e5 embeddings at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from guard_engine.backends.embedded_head import Head

F32 = npt.NDArray[np.float32]
PATIENCE = 300


def project_out(head: Head, basis: F32) -> Head:
    """The same head applied to x - (x U) U^T (per 384-float block of its input, so a
    response head's context and answer halves alike): folded into the first layer, so free."""
    dim = basis.shape[0]
    blocks = np.split(head.w1, head.w1.shape[0] // dim, axis=0)
    w1 = np.concatenate([b - basis @ (basis.T @ b) for b in blocks], axis=0)
    return Head(w1=np.asarray(w1, np.float32), b1=head.b1, w2=head.w2, b2=head.b2)


def train_mlp(
    x: F32,
    y: F32,
    w: F32,
    *,
    hidden: int,
    l2: float,
    epochs: int,
    lr: float,
    seed: int,
    val: tuple[F32, F32, F32] | None = None,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[Head, int, list[float]]:
    """Full-batch Adam on weighted log loss + L2. Features are standardized during training
    and the scaling is folded into the first layer, so the saved head takes raw embeddings.
    With `val`, returns the head of the epoch with the lowest validation loss. `on_epoch` is
    called after every epoch (a progress bar)."""
    rng = np.random.default_rng(seed)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    xs = (x - mu) / sd
    d = x.shape[1]
    params = {
        "w1": (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal(hidden) * np.sqrt(1.0 / hidden)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    wsum = float(w.sum())
    best: tuple[float, int, dict[str, F32]] = (float("inf"), 0, params)
    history: list[float] = []
    for step in range(1, epochs + 1):
        h = xs @ params["w1"] + params["b1"]
        a = np.maximum(h, 0.0)
        z = a @ params["w2"] + params["b2"][0]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
        g = (p - y) * w / wsum  # d loss / d z
        grads = {
            "w2": a.T @ g + l2 * params["w2"],
            "b2": np.asarray([g.sum()], np.float32),
        }
        gh = np.outer(g, params["w2"]) * (h > 0)
        grads["w1"] = xs.T @ gh + l2 * params["w1"]
        grads["b1"] = gh.sum(axis=0)
        for k in params:
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v2[k] = 0.999 * v2[k] + 0.001 * grads[k] ** 2
            mhat = m[k] / (1 - 0.9**step)
            vhat = v2[k] / (1 - 0.999**step)
            params[k] = (params[k] - lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
        if on_epoch is not None:
            on_epoch()
        if val is not None and step % 10 == 0:
            vx, vy, vw = val
            vz = _forward(params, (vx - mu) / sd)
            vp = 1.0 / (1.0 + np.exp(-np.clip(vz, -40, 40)))
            loss = float(
                -(vw * (vy * np.log(vp + 1e-7) + (1 - vy) * np.log(1 - vp + 1e-7))).sum() / vw.sum()
            )
            history.append(loss)
            if loss < best[0]:
                best = (loss, step, {k: val_.copy() for k, val_ in params.items()})
            elif step - best[1] >= PATIENCE:
                break  # no better validation loss for PATIENCE epochs: stop early
    final = best[2] if val is not None else params
    best_step = best[1] if val is not None else epochs
    # fold the standardization into the first layer: ((x - mu) / sd) @ w1 = x @ (w1 / sd) - ...
    w1 = (final["w1"] / sd[:, None]).astype(np.float32)
    b1 = (final["b1"] - (mu / sd) @ final["w1"]).astype(np.float32)
    head = Head(w1=w1, b1=b1, w2=final["w2"].astype(np.float32), b2=float(final["b2"][0]))
    return head, best_step, history


def _forward(params: dict[str, F32], xs: F32) -> F32:
    a = np.maximum(xs @ params["w1"] + params["b1"], 0.0)
    return np.asarray(a @ params["w2"] + params["b2"][0], dtype=np.float32)


def train_logistic_multi(
    x: F32, y: F32, *, l2: float, lr: float, epochs: int, seed: int
) -> tuple[F32, F32]:
    """One-vs-rest logistic regression for k labels at once (y is (n, k) multi-hot), by
    full-batch Adam on log loss + L2, each label's positives and negatives weighted equally.
    Returns (w (d, k), b (k,)) for raw inputs (standardization folded in)."""
    rng = np.random.default_rng(seed)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    xs = (x - mu) / sd
    n, d = xs.shape
    k = y.shape[1]
    pos = y.sum(axis=0)
    wpos = 0.5 * n / np.maximum(pos, 1.0)
    wneg = 0.5 * n / np.maximum(n - pos, 1.0)
    weight = (y * wpos + (1 - y) * wneg).astype(np.float32)
    w = (rng.standard_normal((d, k)) * 0.01).astype(np.float32)
    b = np.zeros(k, np.float32)
    mw, vw = np.zeros_like(w), np.zeros_like(w)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    for step in range(1, epochs + 1):
        z = np.clip(xs @ w + b, -40, 40)
        p = 1.0 / (1.0 + np.exp(-z))
        g = (p - y) * weight / n
        gw = xs.T @ g + l2 * w
        gb = g.sum(axis=0)
        mw = 0.9 * mw + 0.1 * gw
        vw = 0.999 * vw + 0.001 * gw**2
        mb = 0.9 * mb + 0.1 * gb
        vb = 0.999 * vb + 0.001 * gb**2
        c1, c2 = 1 - 0.9**step, 1 - 0.999**step
        w = (w - lr * (mw / c1) / (np.sqrt(vw / c2) + 1e-8)).astype(np.float32)
        b = (b - lr * (mb / c1) / (np.sqrt(vb / c2) + 1e-8)).astype(np.float32)
    w_raw = (w / sd[:, None]).astype(np.float32)
    b_raw = (b - (mu / sd) @ w).astype(np.float32)
    return w_raw, b_raw
