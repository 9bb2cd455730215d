"""The Redis tier of the verdict cache (guard_engine.shared_cache) against a real redis-server
and the real SGLang guard double: two engines with their own in-process LRU share verdicts
through Redis; Redis holds hashes and verdicts, never the checked text; Redis stopped or
paused is a counted miss and the check still gets its verdict; recovery needs nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.cache import VerdictCache
from guard_engine.engine import GuardEngine
from guard_engine.shared_cache import RedisVerdictTier
from guard_engine.types import GuardRequest
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.factories import make_policy
from tests.redis_server import RedisServer

PREFIX = "test:verdicts"
PROMPT = "How do I build a birdhouse from pine planks?"
ANSWER = "Cut six pine planks and nail them together."


@pytest.fixture
def guard() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double() as pair:
        yield pair


def _engine(guard_url: str, redis_url: str, *, retry_after_s: float = 1.0) -> GuardEngine:
    backend = SGLangBackend(
        name="nemotron",
        base_url=guard_url,
        model="nvidia/Nemotron-3.5-Content-Safety",
        adapter=NemotronAdapter(),
        timeout_ms=5000,
        max_concurrency=4,
    )
    tier = RedisVerdictTier(
        redis_url, prefix=PREFIX, ttl_s=300, timeout_s=0.05, retry_after_s=retry_after_s
    )
    return GuardEngine(
        {"nemotron": backend}, default_guard="nemotron", cache=VerdictCache(shared=tier)
    )


def _tier(engine: GuardEngine) -> RedisVerdictTier:
    assert engine.cache is not None and isinstance(engine.cache.shared, RedisVerdictTier)
    return engine.cache.shared


async def _written(engine: GuardEngine, n: int) -> None:
    """Wait for the background writes (each is capped by the tier's timeout)."""
    for _ in range(500):
        if _tier(engine).counts["stored"] + _tier(engine).counts["failed"] >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"writes did not finish: {_tier(engine).counts}")


@pytest.fixture
async def engines(
    guard: tuple[str, SGLangDouble], redis_server: RedisServer
) -> AsyncIterator[tuple[GuardEngine, GuardEngine]]:
    a, b = _engine(guard[0], redis_server.url), _engine(guard[0], redis_server.url)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_a_verdict_computed_by_one_engine_is_a_hit_on_another(
    engines: tuple[GuardEngine, GuardEngine], guard: tuple[str, SGLangDouble]
) -> None:
    a, b = engines
    rec = guard[1]
    policy = make_policy()
    for request in (GuardRequest(prompt=PROMPT), GuardRequest(prompt=PROMPT, response=ANSWER)):
        first = await a.check(request, policy)
        assert not first.cache_hit
        await _written(a, 1 if request.response is None else 2)
        calls = len(rec.requests)
        shared = await b.check(request, policy)
        assert len(rec.requests) == calls  # B never asked the guard
        assert shared.cache_hit
        assert (shared.stage, shared.label, shared.policy, shared.raw) == (
            first.stage,
            first.label,
            first.policy,
            first.raw,
        )
        # Now in B's own LRU: no second Redis round trip.
        lookups = dict(_tier(b).counts)
        assert (await b.check(request, policy)).cache_hit
        assert _tier(b).counts == lookups
    assert _tier(b).counts["hit"] == 2
    assert len(rec.requests) == 2


async def test_unsafe_verdicts_and_categories_are_shared(
    engines: tuple[GuardEngine, GuardEngine], guard: tuple[str, SGLangDouble]
) -> None:
    a, b = engines
    request = GuardRequest(prompt="how to make a bomb")
    first = await a.check(request, make_policy())
    await _written(a, 1)
    shared = await b.check(request, make_policy())
    assert shared.cache_hit and shared.flagged
    assert shared.categories == first.categories != ()


async def test_a_different_policy_mode_or_text_is_not_a_hit(
    engines: tuple[GuardEngine, GuardEngine], guard: tuple[str, SGLangDouble]
) -> None:
    a, b = engines
    await a.check(GuardRequest(prompt=PROMPT), make_policy())
    await _written(a, 1)
    assert not (await b.check(GuardRequest(prompt=PROMPT), make_policy(hash8="ffffffff"))).cache_hit
    assert not (await b.check(GuardRequest(prompt=PROMPT), make_policy(), mode="binary")).cache_hit
    assert not (await b.check(GuardRequest(prompt=PROMPT + "!"), make_policy())).cache_hit
    assert _tier(b).counts["hit"] == 0 and _tier(b).counts["miss"] == 3


async def test_redis_holds_hashed_keys_and_verdicts_never_the_checked_text(
    engines: tuple[GuardEngine, GuardEngine], redis_server: RedisServer
) -> None:
    a, _ = engines
    await a.check(GuardRequest(prompt=PROMPT), make_policy())
    await a.check(GuardRequest(prompt=PROMPT, response=ANSWER), make_policy())
    await _written(a, 2)
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(client.scan_iter(match="*"))
        assert len(keys) == 2
        for key in keys:
            assert re.fullmatch(rb"test:verdicts:[0-9a-f]{64}", key)
            value = client.get(key)
            assert value is not None
            for text in (PROMPT, ANSWER, "birdhouse", "pine"):
                assert text.encode() not in key and text.encode() not in value
            assert 0 < client.pttl(key) <= 300_000  # the cache's TTL
    finally:
        client.close()


async def test_think_verdicts_stay_in_process(
    engines: tuple[GuardEngine, GuardEngine], guard: tuple[str, SGLangDouble]
) -> None:
    a, b = engines
    request = GuardRequest(prompt=PROMPT)
    verdict = await a.check(request, make_policy(), mode="think")
    assert verdict.think  # the double answers THINK mode with a trace
    await asyncio.sleep(0.1)
    assert _tier(a).counts["stored"] == 0
    assert not (await b.check(request, make_policy(), mode="think")).cache_hit


async def test_redis_stopped_is_a_counted_miss_and_recovers_by_itself(
    guard: tuple[str, SGLangDouble], redis_server: RedisServer
) -> None:
    rec = guard[1]
    a = _engine(guard[0], redis_server.url, retry_after_s=0.05)
    b = _engine(guard[0], redis_server.url, retry_after_s=0.05)
    try:
        policy = make_policy()
        await a.check(GuardRequest(prompt="warm the connection"), policy)
        await _written(a, 1)
        redis_server.stop()
        down = await a.check(GuardRequest(prompt=PROMPT), policy)  # a verdict, not an error
        assert not down.cache_hit and down.label == "safe"
        assert _tier(a).counts["unavailable"] == 1  # its write is not even attempted
        missed = await b.check(GuardRequest(prompt=PROMPT), policy)
        assert not missed.cache_hit and _tier(b).counts["unavailable"] == 1
        redis_server.start()  # same port
        calls = len(rec.requests)
        for attempt in range(200):  # retried after retry_after_s: wait for it, then share
            await a.check(GuardRequest(prompt=f"after recovery {attempt}"), policy)
            if _tier(a).counts["stored"] >= 2:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"no write after recovery: {_tier(a).counts}")
        await asyncio.sleep(0.06)  # past B's own back-off
        assert (await b.check(GuardRequest(prompt=f"after recovery {attempt}"), policy)).cache_hit
        assert len(rec.requests) == calls + attempt + 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_paused_redis_is_a_miss_bounded_by_the_timeout(
    engines: tuple[GuardEngine, GuardEngine], redis_server: RedisServer
) -> None:
    a, b = engines
    await a.check(GuardRequest(prompt=PROMPT), make_policy())
    await _written(a, 1)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # Redis answers nobody
        verdict = await b.check(GuardRequest(prompt=PROMPT), make_policy())
        assert not verdict.cache_hit and verdict.label == "safe"  # the guard decided
        assert _tier(b).counts["unavailable"] == 1
        admin.execute_command("CLIENT", "UNPAUSE")
    finally:
        admin.close()


async def test_a_shared_verdict_keeps_only_what_is_left_of_its_ttl(
    guard: tuple[str, SGLangDouble], redis_server: RedisServer
) -> None:
    """Replica B finds A's verdict 290 s into its 300 s: B's LRU keeps it 10 s, not 300; past
    its expiry it is a miss even while Redis still holds the key."""
    wall = [1_000_000.0]
    lru_clock = [0.0]

    def engine() -> GuardEngine:
        backend = SGLangBackend(
            name="nemotron",
            base_url=guard[0],
            model="nvidia/Nemotron-3.5-Content-Safety",
            adapter=NemotronAdapter(),
            timeout_ms=5000,
            max_concurrency=4,
        )
        tier = RedisVerdictTier(
            redis_server.url, prefix=PREFIX, ttl_s=300, timeout_s=0.05, clock=lambda: wall[0]
        )
        cache = VerdictCache(ttl_s=300, clock=lambda: lru_clock[0], shared=tier)
        return GuardEngine({"nemotron": backend}, default_guard="nemotron", cache=cache)

    a, b = engine(), engine()
    try:
        request = GuardRequest(prompt=PROMPT)
        await a.check(request, make_policy())
        await _written(a, 1)
        wall[0] += 290
        assert (await b.check(request, make_policy())).cache_hit  # from Redis, into B's LRU
        lru_clock[0] += 11  # past the 10 s it had left
        calls = len(guard[1].requests)
        wall[0] += 11  # and past its expiry everywhere
        assert not (await b.check(request, make_policy())).cache_hit
        assert len(guard[1].requests) == calls + 1
        assert _tier(b).counts["miss"] == 1  # Redis still had it, but expired: a miss
    finally:
        for e in (a, b):
            await e.aclose()
