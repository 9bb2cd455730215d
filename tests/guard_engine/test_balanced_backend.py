"""A guard served by several replicas (guard_engine.backends.balanced) against three real
SGLang doubles on 127.0.0.1: traffic reaches every endpoint, the least busy first; an endpoint
killed mid-run fails no check; each endpoint has its own circuit breaker and health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import pytest

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.backends.balanced import BalancedBackend
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.breaker import CircuitBreaker
from guard_engine.errors import GuardTimeout, GuardUnavailable, GuardUnparseable
from guard_engine.types import GuardRequest
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.factories import make_policy

MODEL = "nvidia/Nemotron-3.5-Content-Safety"


@pytest.fixture
def doubles() -> Iterator[list[tuple[str, SGLangDouble]]]:
    with ExitStack() as stack:
        yield [stack.enter_context(start_sglang_double()) for _ in range(3)]


def _balanced(urls: list[str], *, failures: int = 2, timeout_ms: int = 5000) -> BalancedBackend:
    return BalancedBackend(
        [
            SGLangBackend(
                name="nemotron",
                base_url=url,
                model=MODEL,
                adapter=NemotronAdapter(),
                timeout_ms=timeout_ms,
                max_concurrency=8,
                breaker=CircuitBreaker(failures, reset_s=60),
                retry_here=False,
            )
            for url in urls
        ],
        timeout_ms=timeout_ms,
    )


@pytest.fixture
async def balanced(doubles: list[tuple[str, SGLangDouble]]) -> AsyncIterator[BalancedBackend]:
    backend = _balanced([url for url, _ in doubles])
    yield backend
    await backend.aclose()


async def _check(backend: BalancedBackend, text: str = "hello") -> str:
    result = await backend.check(GuardRequest(prompt=text), make_policy(), mode="categories")
    return result.verdict.prompt_label


async def test_sequential_checks_reach_every_endpoint(
    balanced: BalancedBackend, doubles: list[tuple[str, SGLangDouble]]
) -> None:
    for i in range(30):
        assert await _check(balanced, f"question {i}") == "safe"
    assert [len(rec.requests) for _, rec in doubles] == [10, 10, 10]


async def test_concurrent_checks_go_to_the_least_busy_endpoint(
    balanced: BalancedBackend, doubles: list[tuple[str, SGLangDouble]]
) -> None:
    doubles[0][1].configure(delay_ms=300)  # a slow replica keeps its checks outstanding
    slow = asyncio.gather(*(_check(balanced) for _ in range(3)))
    await asyncio.sleep(0.05)
    assert balanced.outstanding()[balanced.endpoints[0].root_url] >= 1
    # While the slow one is busy, new checks go to the idle ones.
    assert all(label == "safe" for label in [await _check(balanced) for _ in range(8)])
    await slow
    counts = [len(rec.requests) for _, rec in doubles]
    assert sum(counts) == 11 and counts[0] <= 1, counts


async def test_an_endpoint_killed_mid_run_fails_no_check(
    balanced: BalancedBackend, doubles: list[tuple[str, SGLangDouble]]
) -> None:
    for _, rec in doubles:
        rec.configure(delay_ms=5)
    results: list[str] = []
    a_quarter_done = asyncio.Event()

    async def client(n: int) -> None:
        for i in range(n):
            results.append(await _check(balanced, f"kill the lights {i}"))  # unsafe: "kill"
            if len(results) == 30:
                a_quarter_done.set()

    clients = asyncio.gather(*(client(20) for _ in range(6)))
    await a_quarter_done.wait()
    doubles[1][1].kill()  # checks in flight on it lose their connection
    await clients  # raises if any check failed
    assert len(results) == 120 and set(results) == {"unsafe"}
    served_after = [len(rec.requests) for _, rec in doubles]
    assert served_after[0] > 10 and served_after[2] > 10
    # The dead endpoint's breaker opened; the others' stayed closed.
    states = [endpoint.breaker.state for endpoint in balanced.endpoints if endpoint.breaker]
    assert states == ["closed", "open", "closed"]
    # Opened: it is skipped without a connection attempt; the others share the traffic.
    before = [len(rec.requests) for _, rec in doubles]
    for i in range(10):
        assert await _check(balanced, f"after {i}") == "safe"
    after = [len(rec.requests) for _, rec in doubles]
    assert after[1] == before[1] and after[0] - before[0] == 5 and after[2] - before[2] == 5


async def test_every_endpoint_down_is_guard_unavailable(
    balanced: BalancedBackend, doubles: list[tuple[str, SGLangDouble]]
) -> None:
    for _, rec in doubles:
        rec.kill()
    with pytest.raises(GuardUnavailable, match="cannot connect"):
        await _check(balanced)  # every endpoint tried, in rounds, until the breakers opened
    assert [e.breaker.state for e in balanced.endpoints if e.breaker] == ["open"] * 3
    with pytest.raises(GuardUnavailable, match="circuit open on every endpoint"):
        await _check(balanced)  # no connection attempted


async def test_a_server_error_fails_over_but_an_unreadable_answer_does_not(
    balanced: BalancedBackend, doubles: list[tuple[str, SGLangDouble]]
) -> None:
    doubles[0][1].configure(status=503)
    for _ in range(6):
        assert await _check(balanced) == "safe"
    # Each 503 was asked again elsewhere: six verdicts and one request per 503 in all.
    failed = len(doubles[0][1].requests)
    assert failed >= 1 and sum(len(rec.requests) for _, rec in doubles) == 6 + failed
    for _, rec in doubles:
        rec.configure(status=None, garbage="no verdict here")
    with pytest.raises(GuardUnparseable):
        await _check(balanced)
    assert sum(len(rec.requests) for _, rec in doubles) == 7 + failed  # asked once only


async def test_health_lists_every_endpoint(
    balanced: BalancedBackend, doubles: list[tuple[str, SGLangDouble]]
) -> None:
    health = await balanced.health()
    assert health.ok and health.detail == "3/3 endpoints healthy"
    assert [url for url, _ in health.endpoints] == [url for url, _ in doubles]
    doubles[2][1].kill()
    health = await balanced.health()
    assert health.ok and health.detail == "2/3 endpoints healthy"
    assert [h.ok for _, h in health.endpoints] == [True, True, False]
    assert "cannot connect" in health.endpoints[2][1].detail
    doubles[0][1].kill()
    doubles[1][1].kill()
    assert not (await balanced.health()).ok


def test_a_balanced_guard_needs_two_endpoints() -> None:
    with pytest.raises(ValueError, match="at least two"):
        _balanced(["http://127.0.0.1:9"])


async def test_a_hung_endpoint_times_out_on_its_own_breaker_then_is_skipped(
    doubles: list[tuple[str, SGLangDouble]],
) -> None:
    balanced = _balanced([url for url, _ in doubles[:2]], failures=2, timeout_ms=300)
    try:
        doubles[0][1].configure(delay_ms=2000)  # accepts, never answers in time
        outcomes = []
        for _ in range(6):
            try:
                outcomes.append(await _check(balanced))
            except GuardTimeout:
                outcomes.append("timeout")
        # The hung one's timeouts are its own failures: after two its breaker opened, and
        # every later check went to the other endpoint.
        assert outcomes.count("timeout") == 2 and outcomes[-2:] == ["safe", "safe"]
        assert [e.breaker.state for e in balanced.endpoints if e.breaker] == ["open", "closed"]
    finally:
        await balanced.aclose()
