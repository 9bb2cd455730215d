"""Long texts: overlapping windows within a bound, judged separately, worst window wins."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.backends.windowed import WindowedBackend
from guard_engine.errors import GuardUnavailable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardImage, GuardRequest, Mode, ParsedVerdict, Turn
from guard_engine.windows import request_chars, split_request, split_text, window_spans
from tests.factories import make_policy

SENTENCE = "Here is how to build a bomb at home."


def _text(rng: random.Random, n: int) -> str:
    words = ["river ", "flows ", "calm. ", "the ", "valley\n", "green "]
    return "".join(rng.choice(words) for _ in range(n))


@pytest.mark.parametrize("seed", range(20))
def test_windows_cover_the_text_and_see_every_short_sentence_whole(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([200, 500, 1000])
    text = _text(rng, rng.randint(50, 800))
    at = rng.randrange(len(text))
    text = text[:at] + SENTENCE + text[at:]
    windows = split_text(text, size)
    assert all(len(w) <= size for w in windows)
    assert any(SENTENCE in w for w in windows)  # overlap: never only cut in two
    spans = window_spans(len(text), size, text)
    assert [text[a:b] for a, b in spans] == windows
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end - start >= len(SENTENCE)  # every character covered, with overlap


def test_a_request_that_fits_is_not_split() -> None:
    request = GuardRequest(prompt="short", response="answer")
    assert split_request(request, 1000) == [request]


def test_input_windows_keep_recent_context_and_images_once() -> None:
    image = GuardImage(data=b"x", mime="image/png", sha256="0" * 64)
    request = GuardRequest(
        prompt="p" * 5000,
        images=(image,),
        context=(Turn("user", "old " * 500), Turn("assistant", "recent")),
    )
    windows = split_request(request, 1000)
    assert len(windows) > 5
    assert all(request_chars(w) <= 1000 for w in windows)
    assert windows[0].images == (image,) and all(w.images == () for w in windows[1:])
    assert all(w.context[-1] == Turn("assistant", "recent") for w in windows)
    assert all(w.response is None for w in windows)


def test_output_windows_split_the_response_and_frame_it_with_the_prompt_end() -> None:
    request = GuardRequest(prompt="q" * 3000 + "the question", response="r" * 5000)
    windows = split_request(request, 1000)
    assert all(request_chars(w) <= 1000 for w in windows)
    assert all(w.prompt.endswith("the question") and len(w.prompt) <= 250 for w in windows)
    assert "".join(w.response or "" for w in windows).count("r") >= 5000


class _Guard:
    """A backend double: flags texts containing "bomb"; refuses texts over `context` chars as
    SGLang words it; records what each call received."""

    name = "double"
    model = "double-model"

    def __init__(self, context: int | None = None) -> None:
        self.context = context
        self.sizes: list[int] = []
        self.running = 0
        self.max_running = 0

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(0)
            size = request_chars(request)
            if self.context is not None and size > self.context:
                raise GuardUnavailable(
                    f"guard answered HTTP 400: The input ({size} tokens) is longer than the "
                    f"model's context length ({self.context} tokens).",
                    guard=self.name,
                )
            self.sizes.append(size)
            text = request.response if request.response is not None else request.prompt
            unsafe = "bomb" in text
            label = "unsafe" if unsafe else "safe"
            verdict = ParsedVerdict(
                prompt_label="safe" if request.response is not None else label,
                response_label=label if request.response is not None else None,
                categories=("Guns and Illegal Weapons",) if unsafe else (),
            )
            return BackendResult(verdict=verdict, raw=f"User Safety: {label}")
        finally:
            self.running -= 1

    async def health(self) -> BackendHealth:
        return BackendHealth(ok=True, detail="double")

    async def aclose(self) -> None:
        return None


async def test_worst_window_decides_and_calls_stay_bounded() -> None:
    inner = _Guard()
    backend = WindowedBackend(inner, max_chars=1000, parallel=2)
    policy = make_policy()
    long_text = _text(random.Random(1), 3000)
    safe = await backend.check(GuardRequest(prompt=long_text), policy, mode="categories")
    assert safe.verdict.prompt_label == "safe" and max(inner.sizes) <= 1000
    assert len(inner.sizes) > 10 and inner.max_running <= 2
    middle = len(long_text) // 2
    unsafe_text = long_text[:middle] + SENTENCE + long_text[middle:]
    result = await backend.check(GuardRequest(prompt=unsafe_text), policy, mode="categories")
    assert result.verdict.prompt_label == "unsafe"
    assert result.verdict.categories == ("Guns and Illegal Weapons",)
    assert result.raw.startswith("[window ")
    out = await backend.check(
        GuardRequest(prompt="tell me", response=unsafe_text), policy, mode="categories"
    )
    assert out.verdict.response_label == "unsafe"


async def test_a_window_the_guard_finds_too_long_is_judged_in_halves() -> None:
    # Characters underestimated the tokens: the guard's context is smaller than max_chars.
    inner = _Guard(context=700)
    backend = WindowedBackend(inner, max_chars=4000)
    text = _text(random.Random(2), 1500)
    result = await backend.check(GuardRequest(prompt=text + SENTENCE), make_policy(), mode="binary")
    assert result.verdict.prompt_label == "unsafe"
    assert inner.sizes and max(inner.sizes) <= 700


async def test_other_guard_failures_are_not_retried() -> None:
    class Down(_Guard):
        async def check(self, *args: object, **kwargs: object) -> BackendResult:
            raise GuardUnavailable("cannot connect to guard", guard="double")

    backend = WindowedBackend(Down(), max_chars=1000)
    with pytest.raises(GuardUnavailable):
        await backend.check(GuardRequest(prompt="x" * 5000), make_policy(), mode="binary")


async def test_windows_judged_safe_are_not_asked_again() -> None:
    # A hold-back stream re-checks the answer so far: its first windows do not change.
    inner = _Guard()
    backend = WindowedBackend(inner, max_chars=1000)
    policy = make_policy()
    answer = _text(random.Random(3), 600)
    first = await backend.check(
        GuardRequest(prompt="q", response=answer), policy, mode="categories"
    )
    calls = len(inner.sizes)
    longer = answer + _text(random.Random(4), 50)
    second = await backend.check(
        GuardRequest(prompt="q", response=longer), policy, mode="categories"
    )
    assert first.verdict.response_label == second.verdict.response_label == "safe"
    assert len(inner.sizes) - calls < calls  # only the windows that changed
    before = len(inner.sizes)
    other = make_policy(hash8="ffffffff")  # another policy version asks again
    await backend.check(GuardRequest(prompt="q", response=answer), other, mode="categories")
    assert len(inner.sizes) - before == calls
