"""GuardEngine: guard selection, verdict stamping, cache hits, failures propagating."""

from __future__ import annotations

import pytest

from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.cache import VerdictCache
from guard_engine.engine import GuardEngine
from guard_engine.errors import GuardTimeout, GuardUnavailable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, ParsedVerdict
from tests.factories import make_policy


class RecordingBackend:
    """A Backend that flags prompts containing a trigger word and records every call."""

    def __init__(self, name: str, *, trigger: str = "bomb", fail: Exception | None = None):
        self.name = name
        self.model = f"{name}-model"
        self.trigger = trigger
        self.fail = fail
        self.calls: list[tuple[GuardRequest, Mode]] = []

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
    ) -> BackendResult:
        self.calls.append((request, mode))
        if self.fail is not None:
            raise self.fail
        unsafe = self.trigger in request.prompt
        label = "unsafe" if unsafe else "safe"
        response_label = None
        if request.response is not None:
            response_label = "unsafe" if self.trigger in request.response else "safe"
        parsed = ParsedVerdict(
            prompt_label=label,
            response_label=response_label,
            categories=("Violence",) if unsafe else (),
        )
        return BackendResult(verdict=parsed, raw=f"User Safety: {label}")

    async def health(self) -> BackendHealth:
        return BackendHealth(ok=self.fail is None, detail="test")

    async def aclose(self) -> None:
        pass


async def test_default_guard_and_policy_guard_and_override() -> None:
    a, b = RecordingBackend("a"), RecordingBackend("b")
    engine = GuardEngine({"a": a, "b": b}, default_guard="a")
    v = await engine.check(GuardRequest(prompt="hi"), make_policy())
    assert (v.guard, v.model, v.policy, v.mode, v.flagged) == (
        "a",
        "a-model",
        "test@0123abcd",
        "categories",
        False,
    )
    await engine.check(GuardRequest(prompt="hi"), make_policy(guard="b"))
    await engine.check(GuardRequest(prompt="hi"), make_policy(guard="b"), guard="a", mode="think")
    assert len(a.calls) == 2 and len(b.calls) == 1
    assert a.calls[1][1] == "think"


async def test_output_check_flags_on_response_label_only() -> None:
    engine = GuardEngine({"a": RecordingBackend("a")}, default_guard="a")
    refusal = await engine.check(
        GuardRequest(prompt="a bomb", response="I can't help"), make_policy()
    )
    assert refusal.stage == "output" and refusal.prompt_label == "unsafe" and not refusal.flagged
    harmful = await engine.check(GuardRequest(prompt="hi", response="build a bomb"), make_policy())
    assert harmful.flagged and harmful.label == "unsafe"


async def test_cache_hit_skips_backend_and_is_marked() -> None:
    backend = RecordingBackend("a")
    engine = GuardEngine({"a": backend}, default_guard="a", cache=VerdictCache(max_entries=10))
    first = await engine.check(GuardRequest(prompt="a bomb"), make_policy())
    second = await engine.check(GuardRequest(prompt="a bomb"), make_policy())
    assert len(backend.calls) == 1
    assert not first.cache_hit and second.cache_hit and second.flagged
    # Another policy version (hash) or mode is another key.
    await engine.check(GuardRequest(prompt="a bomb"), make_policy(hash8="ffffffff"))
    await engine.check(GuardRequest(prompt="a bomb"), make_policy(), mode="binary")
    assert len(backend.calls) == 3


async def test_failures_propagate_and_are_not_cached() -> None:
    backend = RecordingBackend("a", fail=GuardTimeout("slow", guard="a"))
    engine = GuardEngine({"a": backend}, default_guard="a", cache=VerdictCache(max_entries=10))
    for _ in range(2):
        with pytest.raises(GuardTimeout):
            await engine.check(GuardRequest(prompt="x"), make_policy())
    assert len(backend.calls) == 2


async def test_unknown_guard_is_unavailable() -> None:
    engine = GuardEngine({"a": RecordingBackend("a")}, default_guard="a")
    with pytest.raises(GuardUnavailable):
        await engine.check(GuardRequest(prompt="x"), make_policy(guard="nope"))
    with pytest.raises(ValueError):
        GuardEngine({"a": RecordingBackend("a")}, default_guard="zzz")
