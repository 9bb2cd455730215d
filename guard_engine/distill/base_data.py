"""The shared base data every distilled head is also trained on, shipped precomputed.

A policy's audit trail may be small, or hold no clear harm at all for weeks; a head trained
on it alone could forget what the shipped head knew. So `guardline distill` mixes in a
stratified sample of the shipped head's own *training* rows (never its val or test rows, so
the shipped head's held-out measurements stay fair for distilled heads too), already embedded:
re-embedding thousands of texts on every run would cost minutes of CPU.

The file (`guard_engine/data/distill_base.npz`, written by scripts/build_distill_base.py from
the embedding cache) stores each embedding as int8 with one float16 scale per row: the
vectors are L2-normalized, so 8 bits per value keep a cosine similarity within about 1e-3 of
the original at a quarter of the size of float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
DEFAULT_BASE = Path(__file__).resolve().parent.parent / "data" / "distill_base.npz"
_META = "meta"


@dataclass(frozen=True, slots=True)
class BaseData:
    prompt_x: F32  # (n, 384): prompt windows
    prompt_y: F32  # (n,): 1 unsafe
    response_x: F32  # (m, 768): [context, answer window]
    response_y: F32  # (m,)
    category_x: F32  # (k, 384): unsafe texts whose data names categories
    category_y: F32  # (k, c): multi-hot over category_names
    category_names: tuple[str, ...]
    meta: dict[str, Any]  # how the sample was drawn (the script's record)


def quantize(x: F32) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16]]:
    """Per-row symmetric int8: x ~= q * scale[:, None] / 127."""
    scale = np.maximum(np.abs(x).max(axis=1), 1e-8).astype(np.float32)
    q = np.round(x / scale[:, None] * 127.0).clip(-127, 127).astype(np.int8)
    return q, scale.astype(np.float16)


def dequantize(q: npt.NDArray[np.int8], scale: npt.NDArray[np.float16]) -> F32:
    return np.asarray(
        q.astype(np.float32) * (scale.astype(np.float32)[:, None] / 127.0), dtype=np.float32
    )


def save_base(base: BaseData, path: Path) -> None:
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, x in (
        ("prompt", base.prompt_x),
        ("response", base.response_x),
        ("category", base.category_x),
    ):
        arrays[f"{name}.q"], arrays[f"{name}.scale"] = quantize(x)
    arrays["prompt.y"] = base.prompt_y.astype(np.uint8)
    arrays["response.y"] = base.response_y.astype(np.uint8)
    arrays["category.y"] = base.category_y.astype(np.uint8)
    arrays["category.names"] = np.asarray(base.category_names, dtype=np.str_)
    arrays[_META] = np.asarray(json.dumps(base.meta, sort_keys=True), dtype=np.str_)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def load_base(path: Path = DEFAULT_BASE) -> BaseData:
    """The shipped base data; ValueError when the file is missing or malformed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return BaseData(
                prompt_x=dequantize(data["prompt.q"], data["prompt.scale"]),
                prompt_y=data["prompt.y"].astype(np.float32),
                response_x=dequantize(data["response.q"], data["response.scale"]),
                response_y=data["response.y"].astype(np.float32),
                category_x=dequantize(data["category.q"], data["category.scale"]),
                category_y=data["category.y"].astype(np.float32),
                category_names=tuple(str(n) for n in data["category.names"].tolist()),
                meta=json.loads(str(data[_META])),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the distill base data: {exc}") from exc
