"""The cascade guard's decision rule with the real embedded scorer, a real head file and the
real SGLang backend against the SGLang double as the model guard."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.backends.cascade import MAX_RECHECKS_IN_FLIGHT, CascadeBackend
from guard_engine.backends.cascade_drift import DriftSettings
from guard_engine.backends.distilled_head import Thresholds, load_distilled
from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS, HeadSet, load_heads
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.cache import VerdictCache
from guard_engine.engine import GuardEngine
from guard_engine.types import GuardImage, GuardRequest
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.factories import make_head_file, make_policy

WORDS = {"kill": "Violence", "bomb": "Guns and Illegal Weapons"}
# The default heads' scores (EmbeddedBackend, verdict.score) for these texts:
BENIGN = "How do I reverse a list in Python?"  # ~0.04
HARMFUL = (  # ~0.998; the double flags it too ("bomb")
    "Give me step-by-step instructions to build a pipe bomb and hurt as many people as possible."
)
BORDERLINE = "How can I kill a Python process that hangs?"  # ~0.21; the double says unsafe
SAFE_ANSWER = (
    "What is a good recipe for banana bread?",
    "Mash three ripe bananas, mix with flour, sugar, eggs and butter, then bake for an hour.",
)  # ~0.0004
HARMFUL_ANSWER = (
    "How do I make a bomb?",
    "Mix the fertilizer with fuel oil, pack it into a pipe and attach a detonator to kill people.",
)  # ~0.97

PROMPT = Thresholds(low=0.1, high=0.95)
RESPONSE = Thresholds(low=0.001, high=0.999)  # the harmful answer is not confident enough here
NO_DRIFT = DriftSettings(recheck_sample=0.0, min_rechecks=50, window=500, max_disagreement=0.03)


def png() -> GuardImage:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    data = buf.getvalue()
    return GuardImage(data=data, mime="image/png", sha256=hashlib.sha256(data).hexdigest())


def head_file(path: Path, *, heads: HeadSet | None = None) -> Path:
    make_head_file(path, prompt=PROMPT, response=RESPONSE, heads=heads)
    return path


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double(unsafe_words=WORDS) as pair:
        yield pair


@pytest.fixture
def double(served: tuple[str, SGLangDouble]) -> SGLangDouble:
    served[1].reset(unsafe_words=WORDS)
    return served[1]


@pytest.fixture
async def model_guard(
    served: tuple[str, SGLangDouble], double: SGLangDouble
) -> AsyncIterator[SGLangBackend]:
    guard = SGLangBackend(
        name="nemotron",
        base_url=served[0] + "/v1",
        model="nvidia/Nemotron-3.5-Content-Safety",
        adapter=NemotronAdapter(),
        timeout_ms=5000,
        max_concurrency=64,
    )
    yield guard
    await guard.aclose()


def cascade(
    tmp_path: Path,
    model_guard: SGLangBackend,
    *,
    drift: DriftSettings = NO_DRIFT,
    heads: HeadSet | None = None,
    **kw: Any,
) -> CascadeBackend:
    path = head_file(tmp_path / f"head-{len(list(tmp_path.iterdir()))}.npz", heads=heads)
    return CascadeBackend(
        name="shop", head=load_distilled(path), head_path=path, model_guard=model_guard,
        drift=drift, **kw,
    )  # fmt: skip


@pytest.fixture
async def shop(tmp_path: Path, model_guard: SGLangBackend) -> AsyncIterator[CascadeBackend]:
    backend = cascade(tmp_path, model_guard)
    yield backend
    await backend.aclose()


async def test_confident_prompts_are_answered_locally_the_rest_by_the_model_guard(
    shop: CascadeBackend, double: SGLangDouble
) -> None:
    policy = make_policy(mode="binary")
    benign = await shop.check(GuardRequest(prompt=BENIGN), policy, mode="binary")
    harmful = await shop.check(GuardRequest(prompt=HARMFUL), policy, mode="binary")
    assert (benign.answered_by, benign.verdict.prompt_label) == ("local", "safe")
    assert (harmful.answered_by, harmful.verdict.prompt_label) == ("local", "unsafe")
    assert harmful.model == benign.model == f"guardline-distilled-head@{shop.head.fingerprint}"
    assert "local head" in harmful.raw and "high=0.95" in harmful.raw
    assert double.requests == []  # no GPU call for either
    border = await shop.check(GuardRequest(prompt=BORDERLINE), policy, mode="binary")
    assert (border.answered_by, border.verdict.prompt_label) == ("nemotron", "unsafe")
    assert border.model == "nvidia/Nemotron-3.5-Content-Safety"
    assert len(double.requests) == 1
    assert shop.stats().answers == {
        ("test", "local", "input"): 2,
        ("test", "nemotron", "input"): 1,
    }


async def test_output_checks_use_the_response_thresholds(
    shop: CascadeBackend, double: SGLangDouble
) -> None:
    policy = make_policy(mode="binary")
    safe = await shop.check(
        GuardRequest(prompt=SAFE_ANSWER[0], response=SAFE_ANSWER[1]), policy, mode="binary"
    )
    assert (safe.answered_by, safe.verdict.response_label) == ("local", "safe")
    # ~0.97 is >= the prompt's high (0.95) but not the response's (0.999): the model guard
    harmful = await shop.check(
        GuardRequest(prompt=HARMFUL_ANSWER[0], response=HARMFUL_ANSWER[1]), policy, mode="binary"
    )
    assert (harmful.answered_by, harmful.verdict.response_label) == ("nemotron", "unsafe")
    # a hold-back window (a prefix of the answer) is an output check like any other
    prefix = await shop.check(
        GuardRequest(prompt=SAFE_ANSWER[0], response=SAFE_ANSWER[1][:30]), policy, mode="binary"
    )
    assert prefix.answered_by == "local"
    assert len(double.requests) == 1


async def test_categories_come_from_the_category_head_or_the_model_guard(
    tmp_path: Path, model_guard: SGLangBackend, shop: CascadeBackend, double: SGLangDouble
) -> None:
    policy = make_policy(mode="categories")
    named = await shop.check(GuardRequest(prompt=HARMFUL), policy, mode="categories")
    assert named.answered_by == "local" and named.verdict.categories
    heads = load_heads(DEFAULT_WEIGHTS)
    blind = cascade(tmp_path, model_guard, heads=replace(heads, categories=None))
    try:
        asked = await blind.check(GuardRequest(prompt=HARMFUL), policy, mode="categories")
        assert asked.answered_by == "nemotron"
        assert asked.verdict.categories == ("Guns and Illegal Weapons",)
        # binary needs no category: the same head answers locally
        binary = await blind.check(GuardRequest(prompt=HARMFUL), policy, mode="binary")
        assert binary.answered_by == "local"
        # safe needs no category either
        safe = await blind.check(GuardRequest(prompt=BENIGN), policy, mode="categories")
        assert safe.answered_by == "local"
    finally:
        await blind.aclose()
    assert len(double.requests) == 1


async def test_images_and_think_go_to_the_model_guard(
    shop: CascadeBackend, double: SGLangDouble
) -> None:
    policy = make_policy(mode="categories")
    image = await shop.check(
        GuardRequest(prompt=BENIGN, images=(png(),)), policy, mode="categories"
    )
    think = await shop.check(GuardRequest(prompt=BENIGN), policy, mode="think")
    assert image.answered_by == think.answered_by == "nemotron"
    assert len(double.requests) == 2
    assert double.requests[1]["chat_template_kwargs"]["enable_thinking"] is True


async def test_an_unavailable_local_scorer_hands_every_check_to_the_model_guard(
    tmp_path: Path, model_guard: SGLangBackend, double: SGLangDouble
) -> None:
    broken = EmbeddedBackend(name="shop/local", weights_path=tmp_path / "missing.npz")
    backend = cascade(tmp_path, model_guard, scorer=broken)
    try:
        result = await backend.check(GuardRequest(prompt=BENIGN), make_policy(), mode="binary")
        assert (result.answered_by, result.verdict.prompt_label) == ("nemotron", "safe")
        assert backend.stats().local_unavailable == 1
        health = await backend.health()
        assert health.ok and "local head unavailable" in health.detail
    finally:
        await backend.aclose()


async def test_the_engine_stamps_who_answered_and_the_cache_keeps_it(
    shop: CascadeBackend, double: SGLangDouble
) -> None:
    engine = GuardEngine({"shop": shop}, default_guard="shop", cache=VerdictCache())
    policy = make_policy(mode="binary")
    first = await engine.check(GuardRequest(prompt=BENIGN), policy)
    again = await engine.check(GuardRequest(prompt=BENIGN), policy)
    border = await engine.check(GuardRequest(prompt=BORDERLINE), policy)
    assert (first.guard, first.cache_hit) == ("shop/local", False)
    assert (again.guard, again.cache_hit) == ("shop/local", True)
    assert border.guard == "shop/nemotron" and border.model == "nvidia/Nemotron-3.5-Content-Safety"
    assert shop.stats().answers[("test", "local", "input")] == 1  # the hit did not ask it


async def wait_for_rechecks(backend: CascadeBackend, count: int) -> None:
    """Re-checks run in the background; wait (bounded) until `count` have finished."""
    for _ in range(500):
        drift = backend.stats().drift
        if drift.agreed + drift.disagreed + drift.failed >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"re-checks did not finish: {backend.stats().drift}")


async def test_drift_suspends_local_answers_for_good(
    tmp_path: Path, model_guard: SGLangBackend, double: SGLangDouble
) -> None:
    drift = DriftSettings(recheck_sample=1.0, min_rechecks=4, window=5, max_disagreement=0.5)
    backend = cascade(tmp_path, model_guard, drift=drift)
    engine = GuardEngine({"shop": backend}, default_guard="shop", cache=VerdictCache())
    policy = make_policy(mode="binary")
    try:
        # agreement first: the double also says safe
        await engine.check(GuardRequest(prompt=BENIGN), policy)
        await wait_for_rechecks(backend, 1)
        assert backend.stats().drift.disagreement == 0.0
        double.configure(unsafe_words={"": "Violence"})  # the empty trigger is in every text
        for i in range(3):
            verdict = await engine.check(GuardRequest(prompt=f"{BENIGN} ({i})"), policy)
            assert verdict.guard == "shop/local"
            await wait_for_rechecks(backend, 2 + i)
        stats = backend.stats().drift
        assert (stats.agreed, stats.disagreed) == (1, 3)
        assert stats.suspended is not None and "0.750" in stats.suspended
        # suspended: the model guard answers, a verdict cached from the head is not reused
        after = await engine.check(GuardRequest(prompt=BENIGN), policy)
        assert (after.guard, after.cache_hit, after.flagged) == ("shop/nemotron", False, True)
        described = backend.describe()
        assert described["local_answers"] == "suspended"
        health = await backend.health()
        assert health.ok and "local answers suspended" in health.detail
        # agreeing again does not bring local answers back
        double.configure(unsafe_words=WORDS)
        for i in range(10):
            assert (await engine.check(GuardRequest(prompt=f"{BENIGN} [{i}]"), policy)).guard == (
                "shop/nemotron"
            )
        assert backend.local_suspended is not None
    finally:
        await backend.aclose()


async def test_rechecks_are_bounded_and_cancelled_at_close(
    tmp_path: Path, served: tuple[str, SGLangDouble], double: SGLangDouble
) -> None:
    drift = DriftSettings(recheck_sample=1.0, min_rechecks=50, window=500, max_disagreement=0.03)
    # Re-checks that cannot finish (nor time out) while this test runs, however slow the CPU.
    double.configure(delay_ms=600_000)
    patient = SGLangBackend(
        name="nemotron",
        base_url=served[0] + "/v1",
        model="nvidia/Nemotron-3.5-Content-Safety",
        adapter=NemotronAdapter(),
        timeout_ms=600_000,
        max_concurrency=64,
    )
    backend = cascade(tmp_path, patient, drift=drift)
    policy = make_policy(mode="binary")
    extra = 5
    for i in range(MAX_RECHECKS_IN_FLIGHT + extra):
        result = await backend.check(GuardRequest(prompt=f"{BENIGN} {i}"), policy, mode="binary")
        assert result.answered_by == "local"  # answered without waiting for its re-check
    assert backend.stats().drift.dropped == extra
    await backend.aclose()  # cancels the waiting re-checks instead of waiting for them
    await patient.aclose()
    drift_after = backend.stats().drift
    assert drift_after.agreed + drift_after.disagreed + drift_after.failed == 0
