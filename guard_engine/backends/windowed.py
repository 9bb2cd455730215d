"""A backend wrapper that keeps every guard call within the guard's context (guard_engine.windows).

A request longer than `max_chars` is split into overlapping windows that the wrapped backend
judges separately (at most `parallel` at a time for one request, so one long text cannot take
every guard slot); the first flagged window ends the check and cancels the rest. Characters
are only an estimate of tokens (code and CJK text take more tokens per character), so when the
guard still refuses a window as longer than its context, that window is split in half and
judged again, down to `MIN_WINDOW_CHARS`: a long text is judged, never answered with a
retryable 503.

A stream's hold-back checks judge the whole answer so far each time, so the windows at its
start come back unchanged check after check: the verdicts of windows judged safe are kept in
a small LRU (keyed like the verdict cache: guard, model, `policy@hash`, mode, content) and not
asked again. A request that fits in one call is passed through untouched.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from guard_engine.backends.base import Backend, BackendHealth, BackendResult
from guard_engine.cache import cache_key
from guard_engine.errors import GuardError, GuardUnavailable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, ParsedVerdict
from guard_engine.windows import MIN_WINDOW_CHARS, flagged, request_chars, split_request

# How SGLang and vLLM word a prompt longer than the model's context (HTTP 400):
# "The input (5000 tokens) is longer than the model's context length (4096 tokens)."
# "This model's maximum context length is 4096 tokens. However, you requested ..."
_TOO_LONG = ("context length", "context_length", "maximum context", "too long")
SAFE_WINDOWS_KEPT = 512


def too_long(exc: GuardError) -> bool:
    """The guard answered, but refused this request for its length."""
    text = f"{exc} {exc.raw or ''}".lower()
    return isinstance(exc, GuardUnavailable) and any(marker in text for marker in _TOO_LONG)


class WindowedBackend:
    """Wraps a backend; the same name, model, health and breaker as the wrapped one."""

    def __init__(self, inner: Backend, *, max_chars: int, parallel: int = 4) -> None:
        if max_chars < MIN_WINDOW_CHARS or parallel < 1:
            raise ValueError(f"max_chars must be >= {MIN_WINDOW_CHARS} and parallel >= 1")
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.max_chars = max_chars
        self._parallel = parallel
        self._safe: OrderedDict[str, BackendResult] = OrderedDict()  # LRU of safe windows

    @property
    def breaker(self) -> object:
        # Read by metrics (the breaker-state gauge) and /readyz like the wrapped backend's.
        return getattr(self.inner, "breaker", None)

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        slots = asyncio.Semaphore(self._parallel)
        windows = split_request(request, self.max_chars)
        return await self._judge(windows, policy, mode, headers, slots)

    async def _judge(
        self,
        windows: Sequence[GuardRequest],
        policy: CompiledPolicy,
        mode: Mode,
        headers: dict[str, str] | None,
        slots: asyncio.Semaphore,
    ) -> BackendResult:
        if len(windows) == 1:
            return await self._one(windows[0], policy, mode, headers, slots)
        tasks = [
            asyncio.ensure_future(self._remembered(w, policy, mode, headers, slots))
            for w in windows
        ]
        index = {task: i for i, task in enumerate(tasks)}
        results: dict[int, BackendResult] = {}
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    i = index[task]
                    results[i] = task.result()  # a failed window fails the check
                    if flagged(results[i].verdict, windows[i]):
                        return _combined(results, windows)  # the rest cannot make it safer
            return _combined(results, windows)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _remembered(
        self,
        window: GuardRequest,
        policy: CompiledPolicy,
        mode: Mode,
        headers: dict[str, str] | None,
        slots: asyncio.Semaphore,
    ) -> BackendResult:
        """One window of a split check, answered from the safe-window LRU when it can be."""
        key = cache_key(
            guard=self.name, adapter=self.model, policy_ref=policy.ref, mode=mode, request=window
        )
        known = self._safe.get(key)
        if known is not None:
            self._safe.move_to_end(key)
            return known
        result = await self._one(window, policy, mode, headers, slots)
        if not flagged(result.verdict, window):
            self._safe[key] = result
            if len(self._safe) > SAFE_WINDOWS_KEPT:
                self._safe.popitem(last=False)
        return result

    async def _one(
        self,
        window: GuardRequest,
        policy: CompiledPolicy,
        mode: Mode,
        headers: dict[str, str] | None,
        slots: asyncio.Semaphore,
    ) -> BackendResult:
        try:
            async with slots:
                return await self.inner.check(window, policy, mode=mode, headers=headers)
        except GuardError as exc:
            size = request_chars(window)
            if not too_long(exc) or size < 2 * MIN_WINDOW_CHARS:
                raise
        # Longer in tokens than its characters promised: judge it in halves.
        halves = split_request(window, size // 2)
        return await self._judge(halves, policy, mode, headers, slots)

    async def health(self) -> BackendHealth:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _combined(results: dict[int, BackendResult], windows: Sequence[GuardRequest]) -> BackendResult:
    """The worst window's verdict (first flagged, else the last judged), with the categories of
    every flagged window; `raw` says which window decided."""
    order = sorted(results)
    worst = next((i for i in order if flagged(results[i].verdict, windows[i])), order[-1])
    verdicts = [results[i].verdict for i in order]
    categories = tuple(dict.fromkeys(c for v in verdicts for c in v.categories))
    scores = [v.score for v in verdicts if v.score is not None]
    chosen = results[worst].verdict
    verdict = ParsedVerdict(
        prompt_label="unsafe" if any(v.prompt_label == "unsafe" for v in verdicts) else "safe",
        response_label=chosen.response_label,
        categories=categories,
        think=chosen.think,
        score=max(scores) if scores else None,
    )
    raw = f"[window {worst + 1} of {len(windows)}] {results[worst].raw}"
    return BackendResult(verdict=verdict, raw=raw)
