"""VerdictCache: LRU order, TTL, stats, degraded verdicts, and what the key covers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from guard_engine.cache import VerdictCache, cache_key
from guard_engine.types import GuardImage, GuardRequest, Turn, Verdict


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verdict(label: str = "safe", *, degraded: bool = False) -> Verdict:
    return Verdict(
        stage="input",
        prompt_label="unsafe" if label == "unsafe" else "safe",
        response_label=None,
        categories=(),
        score=None,
        think=None,
        raw=f"User Safety: {label}",
        latency_ms=12.5,
        cache_hit=False,
        degraded=degraded,
        guard="nemotron",
        model="nvidia/Nemotron-3.5-Content-Safety",
        policy="default@12345678",
        mode="categories",
    )


def key(request: GuardRequest, **overrides: str) -> str:
    fields = {
        "guard": "nemotron",
        "adapter": "nemotron-3.5",
        "policy_ref": "default@12345678",
        "mode": "categories",
    }
    fields.update(overrides)
    return cache_key(request=request, **fields)


def image(sha: str) -> GuardImage:
    return GuardImage(data=b"x", mime="image/png", sha256=sha)


def test_hit_returns_the_verdict_marked_as_a_cache_hit() -> None:
    cache = VerdictCache()
    cache.put("k", verdict("unsafe"))
    hit = cache.get("k")
    assert hit is not None and hit.cache_hit and hit.flagged
    assert hit.latency_ms == 12.5  # the original guard cost; the engine may replace it
    assert cache.get("other") is None
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.size) == (1, 1, 1)


def test_least_recently_used_entry_is_evicted() -> None:
    cache = VerdictCache(max_entries=2)
    cache.put("a", verdict())
    cache.put("b", verdict())
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("c", verdict())
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.stats.evictions == 1 and len(cache) == 2


def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    cache = VerdictCache(ttl_s=10.0, clock=clock)
    cache.put("k", verdict())
    clock.now += 9.9
    assert cache.get("k") is not None
    clock.now += 0.1
    assert cache.get("k") is None
    assert cache.stats.expirations == 1 and cache.stats.size == 0


def test_put_refreshes_value_and_ttl() -> None:
    clock = FakeClock()
    cache = VerdictCache(ttl_s=10.0, clock=clock)
    cache.put("k", verdict("safe"))
    clock.now += 8
    cache.put("k", verdict("unsafe"))
    clock.now += 8
    hit = cache.get("k")
    assert hit is not None and hit.prompt_label == "unsafe"


def test_degraded_verdicts_are_not_cached_and_zero_size_disables() -> None:
    cache = VerdictCache()
    cache.put("k", verdict(degraded=True))
    assert cache.get("k") is None
    off = VerdictCache(max_entries=0)
    off.put("k", verdict())
    assert off.get("k") is None and len(off) == 0


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        VerdictCache(max_entries=-1)
    with pytest.raises(ValueError):
        VerdictCache(ttl_s=0)


def test_key_is_stable_and_covers_every_input() -> None:
    base = GuardRequest(prompt="hello", images=(image("a" * 64),), response=None)
    k = key(base)
    assert k == key(GuardRequest(prompt="hello", images=(image("a" * 64),)))
    assert len(k) == 64
    variants = {
        key(base, guard="local"),
        key(base, adapter="llama-guard-3"),
        key(base, policy_ref="default@87654321"),
        key(base, mode="think"),
        key(replace(base, prompt="hello!")),
        key(replace(base, response="hi")),
        key(replace(base, response="")),
        key(replace(base, images=(image("b" * 64),))),
        key(replace(base, images=())),
        key(replace(base, context=(Turn("user", "earlier"),))),
        key(replace(base, context=(Turn("assistant", "earlier"),))),
    }
    assert k not in variants and len(variants) == 11


def test_key_has_no_concatenation_collisions() -> None:
    a = GuardRequest(prompt="ab", response="c")
    b = GuardRequest(prompt="a", response="bc")
    assert key(a) != key(b)
    assert key(GuardRequest(prompt="x"), guard="a|b", adapter="c") != key(
        GuardRequest(prompt="x"), guard="a", adapter="b|c"
    )


def test_image_bytes_do_not_matter_only_the_normalized_hash() -> None:
    one = GuardImage(data=b"one", mime="image/png", sha256="c" * 64)
    two = GuardImage(data=b"two", mime="image/png", sha256="c" * 64)
    assert key(GuardRequest(prompt="p", images=(one,))) == key(
        GuardRequest(prompt="p", images=(two,))
    )


def test_last_user_scope_reuses_verdicts_across_turns() -> None:
    """With scope last_user the next turn of a chat sends only the new user message, so a
    message that was checked once is a cache hit wherever it appears again."""
    cache = VerdictCache()
    first_turn = GuardRequest(prompt="What is photosynthesis?")
    cache.put(key(first_turn), verdict())
    again = GuardRequest(prompt="What is photosynthesis?")
    assert cache.get(key(again)) is not None
