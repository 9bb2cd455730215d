"""Contract tests of the SGLang backend with respx: the request it sends, retries, deadline,
concurrency bound, error mapping, circuit breaker and health probe."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.backends.sglang import (
    MAX_ATTEMPTS,
    SGLangBackend,
    normalize_base_url,
    retry_after_s,
)
from guard_engine.breaker import CircuitBreaker
from guard_engine.errors import GuardTimeout, GuardUnavailable, GuardUnparseable
from guard_engine.types import GuardRequest
from tests.factories import make_policy

BASE = "http://guard.test:30000"
CHAT = BASE + "/v1/chat/completions"
MODEL = "nvidia/Nemotron-3.5-Content-Safety"
POLICY = make_policy()


def completion(content: Any, **message: Any) -> httpx.Response:
    msg = {"role": "assistant", "content": content, **message}
    return httpx.Response(
        200,
        json={
            "id": "x",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
        },
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_backend(
    router: respx.Router,
    *,
    base_url: str = BASE,
    timeout_ms: int = 5000,
    max_concurrency: int = 4,
    api_key: str | None = None,
    breaker: CircuitBreaker | None = None,
) -> SGLangBackend:
    return SGLangBackend(
        name="nemotron",
        base_url=base_url,
        model=MODEL,
        adapter=NemotronAdapter(),
        timeout_ms=timeout_ms,
        max_concurrency=max_concurrency,
        api_key=api_key,
        breaker=breaker,
        transport=httpx.MockTransport(router.async_handler),
    )


async def check(backend: SGLangBackend, **request: Any) -> Any:
    return await backend.check(
        GuardRequest(**{"prompt": "hello", **request}), POLICY, mode="categories"
    )


# ------------------------------------------------------------------------------ request


async def test_posts_adapter_body_with_auth_and_traceparent() -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=completion("User Safety: safe"))
    backend = make_backend(router, api_key="sk-guard")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    result = await backend.check(
        GuardRequest(prompt="hello"),
        POLICY,
        mode="categories",
        headers={"traceparent": traceparent},
    )
    await backend.aclose()
    sent = route.calls.last.request
    assert json.loads(sent.content) == NemotronAdapter().build_body(
        GuardRequest(prompt="hello"), POLICY, model=MODEL, mode="categories"
    )
    assert sent.headers["authorization"] == "Bearer sk-guard"
    assert sent.headers["traceparent"] == traceparent
    assert sent.headers["content-type"] == "application/json"
    assert result.verdict.prompt_label == "safe"
    assert result.raw == "User Safety: safe"


@pytest.mark.parametrize(
    "base_url", [BASE, BASE + "/", BASE + "/v1", BASE + "/v1/", " http://guard.test:30000/v1 "]
)
async def test_base_url_with_or_without_v1(base_url: str) -> None:
    assert normalize_base_url(base_url) == BASE
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=completion("User Safety: safe"))
    backend = make_backend(router, base_url=base_url)
    await check(backend)
    await backend.aclose()
    assert route.call_count == 1


async def test_no_authorization_header_without_api_key() -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=completion("User Safety: safe"))
    backend = make_backend(router)
    await check(backend)
    await backend.aclose()
    assert "authorization" not in route.calls.last.request.headers


async def test_output_check_parses_response_label() -> None:
    router = respx.Router()
    router.post(CHAT).mock(
        return_value=completion(
            "User Safety: safe\nResponse Safety: unsafe\nSafety Categories: Violence"
        )
    )
    backend = make_backend(router)
    result = await check(backend, response="kill them")
    await backend.aclose()
    assert result.verdict.response_label == "unsafe"
    assert result.verdict.categories == ("Violence",)


async def test_reasoning_content_is_folded_back_as_think() -> None:
    router = respx.Router()
    router.post(CHAT).mock(
        return_value=completion("User Safety: safe", reasoning_content="benign question")
    )
    backend = make_backend(router)
    result = await check(backend)
    await backend.aclose()
    assert result.verdict.think == "benign question"
    assert result.raw == "<think>benign question</think>User Safety: safe"


# ------------------------------------------------------------------------------ retries


@pytest.mark.parametrize("status", [429, 503])
async def test_retries_429_and_503_honouring_retry_after(status: int) -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(
        side_effect=[
            httpx.Response(status, headers={"retry-after": "0"}),
            completion("User Safety: unsafe\nSafety Categories: Threat"),
        ]
    )
    backend = make_backend(router)
    result = await check(backend)
    await backend.aclose()
    assert route.call_count == 2
    assert result.verdict.categories == ("Threat",)


async def test_retries_connect_errors() -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(
        side_effect=[httpx.ConnectError("refused"), completion("User Safety: safe")]
    )
    backend = make_backend(router)
    result = await check(backend)
    await backend.aclose()
    assert route.call_count == 2
    assert result.verdict.prompt_label == "safe"


async def test_429_exhausted_is_unavailable() -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=httpx.Response(429, headers={"retry-after": "0"}))
    backend = make_backend(router)
    with pytest.raises(GuardUnavailable, match="429") as info:
        await check(backend)
    await backend.aclose()
    assert route.call_count == MAX_ATTEMPTS
    assert info.value.guard == "nemotron"


async def test_retry_after_past_the_deadline_fails_now_without_waiting() -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=httpx.Response(503, headers={"retry-after": "60"}))
    backend = make_backend(router, timeout_ms=1000)
    with pytest.raises(GuardUnavailable, match="503"):
        await check(backend)
    await backend.aclose()
    assert route.call_count == 1


@pytest.mark.parametrize("status", [500, 502, 504, 400, 404, 413])
async def test_other_statuses_are_not_retried(status: int) -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=httpx.Response(status, text="nope"))
    backend = make_backend(router)
    with pytest.raises(GuardUnavailable, match=str(status)):
        await check(backend)
    await backend.aclose()
    assert route.call_count == 1


@pytest.mark.parametrize(
    "exc", [httpx.ReadError("reset"), httpx.RemoteProtocolError("closed"), httpx.WriteError("x")]
)
async def test_transport_errors_after_connect_are_unavailable_without_retry(
    exc: Exception,
) -> None:
    router = respx.Router()
    route = router.post(CHAT).mock(side_effect=exc)
    backend = make_backend(router)
    with pytest.raises(GuardUnavailable):
        await check(backend)
    await backend.aclose()
    assert route.call_count == 1


# ------------------------------------------------------------------------------ deadline


class Hang:
    """A side effect that never answers; counts the requests that reached it (respx records a
    call only once it has been answered)."""

    def __init__(self) -> None:
        self.started = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.started += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_slow_guard_is_a_timeout() -> None:
    router = respx.Router()
    router.post(CHAT).mock(side_effect=Hang())
    backend = make_backend(router, timeout_ms=50)
    with pytest.raises(GuardTimeout):
        await check(backend)
    await backend.aclose()


async def test_httpx_timeout_is_a_timeout() -> None:
    router = respx.Router()
    router.post(CHAT).mock(side_effect=httpx.ReadTimeout("slow"))
    backend = make_backend(router)
    with pytest.raises(GuardTimeout):
        await check(backend)
    await backend.aclose()


async def test_deadline_covers_waiting_for_a_slot() -> None:
    hang = Hang()
    router = respx.Router()
    router.post(CHAT).mock(side_effect=hang)
    backend = make_backend(router, timeout_ms=100, max_concurrency=1)
    results = await asyncio.gather(check(backend), check(backend), return_exceptions=True)
    await backend.aclose()
    assert all(isinstance(r, GuardTimeout) for r in results)
    assert hang.started == 1  # the second call never got a slot


async def test_concurrency_is_bounded() -> None:
    in_flight = 0
    peak = 0
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        return completion("User Safety: safe")

    router = respx.Router()
    router.post(CHAT).mock(side_effect=slow)
    backend = make_backend(router, max_concurrency=2, timeout_ms=30_000)
    tasks = [asyncio.create_task(check(backend)) for _ in range(6)]
    for _ in range(50):  # let every task run as far as it can
        await asyncio.sleep(0)
    assert in_flight == 2
    gate.set()
    results = await asyncio.gather(*tasks)
    await backend.aclose()
    assert peak == 2
    assert len(results) == 6


# ------------------------------------------------------------------------------ bad answers


async def test_non_json_body_is_unparseable_with_raw() -> None:
    router = respx.Router()
    router.post(CHAT).mock(return_value=httpx.Response(200, text="<html>oops</html>"))
    backend = make_backend(router)
    with pytest.raises(GuardUnparseable) as info:
        await check(backend)
    await backend.aclose()
    assert info.value.raw == "<html>oops</html>"
    assert info.value.guard == "nemotron"


@pytest.mark.parametrize("body", [{"choices": []}, {"choices": [{"message": {}}]}, [1, 2]])
async def test_json_that_is_not_a_completion_is_unparseable(body: Any) -> None:
    router = respx.Router()
    router.post(CHAT).mock(return_value=httpx.Response(200, json=body))
    backend = make_backend(router)
    with pytest.raises(GuardUnparseable):
        await check(backend)
    await backend.aclose()


async def test_null_content_is_unparseable() -> None:
    router = respx.Router()
    router.post(CHAT).mock(return_value=completion(None))
    backend = make_backend(router)
    with pytest.raises(GuardUnparseable):
        await check(backend)
    await backend.aclose()


async def test_content_without_verdict_is_unparseable_with_raw() -> None:
    router = respx.Router()
    router.post(CHAT).mock(return_value=completion("Sure! Here is a poem."))
    backend = make_backend(router)
    with pytest.raises(GuardUnparseable) as info:
        await check(backend)
    await backend.aclose()
    assert info.value.raw == "Sure! Here is a poem."
    assert info.value.guard == "nemotron"


# ------------------------------------------------------------------------------ breaker


def _with_breaker(
    router: respx.Router, clock: FakeClock, failures: int = 2
) -> tuple[SGLangBackend, CircuitBreaker]:
    breaker = CircuitBreaker(failures=failures, reset_s=5.0, clock=clock)
    return make_backend(router, breaker=breaker), breaker


async def test_breaker_opens_after_failures_and_rejects_without_calling() -> None:
    clock = FakeClock()
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=httpx.Response(500))
    backend, breaker = _with_breaker(router, clock)
    for _ in range(2):
        with pytest.raises(GuardUnavailable):
            await check(backend)
    assert breaker.state == "open"
    with pytest.raises(GuardUnavailable, match="circuit open"):
        await check(backend)
    assert route.call_count == 2
    # After reset_s one probe goes through; its success closes the breaker.
    clock.now += 5.0
    route.mock(return_value=completion("User Safety: safe"))
    await check(backend)
    assert breaker.describe() == "closed"
    assert route.call_count == 3
    await backend.aclose()


async def test_timeouts_count_for_the_breaker() -> None:
    clock = FakeClock()
    router = respx.Router()
    router.post(CHAT).mock(side_effect=httpx.ReadTimeout("slow"))
    backend, breaker = _with_breaker(router, clock, failures=1)
    with pytest.raises(GuardTimeout):
        await check(backend)
    assert breaker.state == "open"
    await backend.aclose()


@pytest.mark.parametrize(
    "response",
    [completion("garbage"), httpx.Response(200, text="not json"), httpx.Response(400)],
)
async def test_answers_that_prove_the_guard_is_up_do_not_count(response: httpx.Response) -> None:
    clock = FakeClock()
    router = respx.Router()
    router.post(CHAT).mock(return_value=response)
    backend, breaker = _with_breaker(router, clock, failures=1)
    for _ in range(3):
        with pytest.raises((GuardUnparseable, GuardUnavailable)):
            await check(backend)
    assert breaker.state == "closed"
    await backend.aclose()


async def test_cancelled_probe_frees_the_probe_slot() -> None:
    clock = FakeClock()
    router = respx.Router()
    route = router.post(CHAT).mock(return_value=httpx.Response(500))
    backend, breaker = _with_breaker(router, clock, failures=1)
    with pytest.raises(GuardUnavailable):
        await check(backend)
    clock.now += 5.0
    hang = Hang()
    route.mock(side_effect=hang)
    probe = asyncio.create_task(check(backend))
    for _ in range(20):
        await asyncio.sleep(0)
    assert hang.started == 1  # the probe is in flight; others are rejected meanwhile
    with pytest.raises(GuardUnavailable, match="circuit open"):
        await check(backend)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    route.mock(return_value=completion("User Safety: safe"))
    await check(backend)  # the next call may probe
    assert breaker.state == "closed"
    await backend.aclose()


# ------------------------------------------------------------------------------ health


async def test_health_ok() -> None:
    router = respx.Router()
    router.get(BASE + "/health").mock(return_value=httpx.Response(200))
    backend = make_backend(router, breaker=CircuitBreaker(3, 5.0))
    health = await backend.health()
    await backend.aclose()
    assert health.ok
    assert "breaker closed" in health.detail


async def test_health_falls_back_to_nim_readiness() -> None:
    router = respx.Router()
    router.get(BASE + "/health").mock(return_value=httpx.Response(404))
    router.get(BASE + "/v1/health/ready").mock(return_value=httpx.Response(200))
    backend = make_backend(router, base_url=BASE + "/v1")
    health = await backend.health()
    await backend.aclose()
    assert health.ok


async def test_health_down_when_unreachable() -> None:
    router = respx.Router()
    router.get(BASE + "/health").mock(side_effect=httpx.ConnectError("refused"))
    backend = make_backend(router)
    health = await backend.health()
    await backend.aclose()
    assert not health.ok
    assert "connect" in health.detail


async def test_health_not_ok_while_breaker_open() -> None:
    clock = FakeClock()
    router = respx.Router()
    router.get(BASE + "/health").mock(return_value=httpx.Response(200))
    router.post(CHAT).mock(return_value=httpx.Response(503, headers={"retry-after": "60"}))
    backend, _ = _with_breaker(router, clock, failures=1)
    with pytest.raises(GuardUnavailable):
        await check(backend)
    health = await backend.health()
    await backend.aclose()
    assert not health.ok
    assert "open" in health.detail


# ------------------------------------------------------------------------------ helpers


def test_retry_after_parsing() -> None:
    assert retry_after_s("2") == 2.0
    assert retry_after_s("0.5") == 0.5
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


async def test_a_given_transport_carries_every_call_and_is_closed_with_the_backend() -> None:
    """With a transport (the gateway's lean one), checks and health probes go straight to it,
    with the backend's headers and the call's deadline as httpx's four timeout phases; closing
    the backend closes it."""
    seen: list[httpx.Request] = []
    closed: list[bool] = []

    class Recording(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200)
        return completion("User Safety: safe")

    backend = SGLangBackend(
        name="nemotron",
        base_url=BASE,
        model=MODEL,
        adapter=NemotronAdapter(),
        timeout_ms=2000,
        max_concurrency=1,
        api_key="sk-guard",
        transport=Recording(handler),
    )
    result = await backend.check(
        GuardRequest(prompt="hello"), POLICY, mode="categories", headers={"traceparent": "tp"}
    )
    assert result.verdict.prompt_label == "safe"
    assert (await backend.health()).ok
    await backend.aclose()
    post, get = seen
    assert post.headers["authorization"] == "Bearer sk-guard"
    assert post.headers["traceparent"] == "tp"
    assert post.headers["content-type"] == "application/json"
    assert set(post.extensions["timeout"]) == {"connect", "read", "write", "pool"}
    assert 0 < post.extensions["timeout"]["read"] <= 2.0
    assert get.url == BASE + "/health" and "traceparent" not in get.headers
    assert closed == [True]
