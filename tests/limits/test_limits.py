"""Limits per tenant, in process and in a real redis-server: the same behaviour from both."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from proxy.limits.service import format_reset
from proxy.limits.store import LocalStore
from tests.limits.helpers import CHAT, KEYS, Running, auth, gateway, limits_config
from tests.redis_server import RedisServer

STORES = ["in-process", "redis"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The limits' redis_url: empty (in process) or a real redis-server's."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        yield server.url
    else:
        yield ""


def post(base: str, tenant: str = "acme", **extra: object) -> httpx.Response:
    return httpx.post(
        base + "/v1/chat/completions", json={**CHAT, **extra}, headers=auth(tenant), timeout=30
    )


def test_reset_durations_are_written_as_openai_does() -> None:
    assert format_reset(20) == "20ms"
    assert format_reset(6000) == "6s"
    assert format_reset(1500) == "1.5s"
    assert format_reset(60_000) == "1m0s"
    assert format_reset(90_500) == "1m30s"
    assert format_reset(3_600_000) == "1h0m0s"


def test_requests_per_minute_429_with_openai_headers(double_url: str, store: str) -> None:
    config = limits_config(double_url, {"requests_per_minute": 3}, redis_url=store)
    with gateway(config) as gw:
        for remaining in (2, 1, 0):
            ok = post(gw.url)
            assert ok.status_code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "3"
            assert ok.headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
            assert "x-ratelimit-limit-tokens" not in ok.headers  # no token limit configured
        refused = post(gw.url)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "requests"
        assert "requests per min (RPM): Limit 3, Used 3" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "3"
        # Another tenant has its own (here: no) limit.
        assert post(gw.url, "other").status_code == 200
        assert gw.limiter.counts["rejected_requests"] == 1


def test_a_route_limit_applies_per_tenant_on_top_of_the_tenant_limit(
    double_url: str, store: str
) -> None:
    config = limits_config(
        double_url,
        {"requests_per_minute": 100},
        redis_url=store,
        routes={"default": {"requests_per_minute": 2}},
    )
    with gateway(config) as gw:
        first = post(gw.url)
        # The headers show the tightest limit: the route's.
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert post(gw.url).status_code == 200
        refused = post(gw.url)
        assert refused.status_code == 429
        assert "tenant 'acme' on route 'default'" in refused.json()["error"]["message"]
        # Each tenant has its own counters on the route (`other` has no tenant limit).
        assert post(gw.url, "other").headers["x-ratelimit-remaining-requests"] == "1"
        assert gw.limiter.counts["admitted"] == 3  # two of acme's, one of other's
        assert gw.limiter.counts["rejected_requests"] == 1


def test_tokens_per_minute_counted_from_usage(double_url: str, store: str) -> None:
    # The double reports 12 tokens per answer (body, or the stream's usage chunk).
    config = limits_config(double_url, {"tokens_per_minute": 30}, redis_url=store)
    with gateway(config) as gw:
        first = post(gw.url)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-tokens"] == "30"  # nothing counted yet
        gw.settle()
        # A stream whose client asked for usage: the usage chunk is counted, bytes unchanged.
        with httpx.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=auth(),
        ) as streamed:
            assert streamed.headers["x-ratelimit-remaining-tokens"] == "18"
            body = b"".join(streamed.iter_raw())
        assert b'"total_tokens":12' in body and body.endswith(b"data: [DONE]\n\n")
        gw.settle()
        third = post(gw.url)  # 24 of 30 used: still admitted
        assert third.status_code == 200
        assert third.headers["x-ratelimit-remaining-tokens"] == "6"
        gw.settle()
        refused = post(gw.url)  # 36 >= 30
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "tokens")
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        assert int(refused.headers["retry-after"]) >= 1


def test_concurrent_requests_limit(double_url: str, store: str) -> None:
    config = limits_config(double_url, {"concurrent_requests": 1}, redis_url=store)
    with gateway(config) as gw:
        slow = {"x-double-chunks": "4", "x-double-chunk-delay-ms": "100", **auth()}
        with httpx.stream(
            "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=slow
        ) as first:
            assert first.status_code == 200
            chunks = first.iter_raw()
            next(chunks)  # in flight
            refused = post(gw.url)
            assert refused.status_code == 429
            assert refused.json()["error"]["type"] == "requests"
            assert refused.headers["retry-after"] == "1"
            assert post(gw.url, "other").status_code == 200  # other tenants are not held up
            for _ in chunks:
                pass
        gw.settle()
        assert post(gw.url).status_code == 200  # the slot was released


def test_openai_sdk_backs_off_on_retry_after_and_retries(double_url: str) -> None:
    """The official SDK, unchanged (max_retries=1): the 429 with Retry-After makes it wait and
    retry; the retry succeeds because the request holding the only slot ended meanwhile."""
    config = limits_config(double_url, {"concurrent_requests": 1})
    with gateway(config) as gw:
        slow = {"x-double-chunks": "100", "x-double-chunk-delay-ms": "100", **auth()}
        holder = httpx.stream(
            "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=slow
        )
        first = holder.__enter__()
        chunks = first.iter_raw()
        next(chunks)
        statuses: list[int] = []
        lock = threading.Lock()

        def on_response(response: httpx.Response) -> None:
            with lock:
                statuses.append(response.status_code)
                if response.status_code == 429:
                    assert response.headers["retry-after"] == "1"
                    holder.__exit__(None, None, None)  # the holder leaves: its slot is released
                    store = gw.limiter.store
                    assert isinstance(store, LocalStore)
                    deadline = time.monotonic() + 10
                    while store.in_flight("acme"):
                        assert time.monotonic() < deadline, "the holder's slot was not released"
                        time.sleep(0.005)

        client = openai.OpenAI(
            base_url=gw.url + "/v1",
            api_key=KEYS["acme"],
            max_retries=1,
            http_client=httpx.Client(event_hooks={"response": [on_response]}),
        )
        completion = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "double says: hi"
        assert statuses == [429, 200]


def _degraded_until_recovered(gw: Running, server: RedisServer) -> None:
    server.start()  # same port: the client reconnects by itself
    deadline = 200
    for _ in range(deadline):
        response = post(gw.url)
        if response.status_code == 200 and "x-guardline-limits" not in response.headers:
            assert response.headers["x-ratelimit-limit-requests"] == "100"
            return
        threading.Event().wait(0.05)
    raise AssertionError("limits did not recover after Redis came back")


def test_redis_down_fail_open_serves_marked_and_counted(
    double_url: str, redis_server: RedisServer
) -> None:
    config = limits_config(
        double_url, {"requests_per_minute": 100}, redis_url=redis_server.url, on_redis_error="open"
    )
    with gateway(config) as gw:
        assert post(gw.url).headers["x-ratelimit-remaining-requests"] == "99"
        redis_server.stop()
        down = post(gw.url)
        assert down.status_code == 200
        assert down.headers["x-guardline-limits"] == "degraded"
        assert "x-ratelimit-limit-requests" not in down.headers
        assert post(gw.url).status_code == 200  # within the back-off: no Redis call at all
        assert gw.limiter.counts["degraded"] == 2
        _degraded_until_recovered(gw, redis_server)


def test_redis_down_fail_closed_answers_503(double_url: str, redis_server: RedisServer) -> None:
    config = limits_config(
        double_url,
        {"requests_per_minute": 100},
        redis_url=redis_server.url,
        on_redis_error="closed",
        redis_timeout_ms=200,
    )
    with gateway(config) as gw:
        assert post(gw.url).status_code == 200
        redis_server.stop()
        down = post(gw.url)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "rate_limits_unavailable"
        assert down.headers["retry-after"] == "1"
        assert gw.limiter.counts["unavailable"] == 1
        _degraded_until_recovered(gw, redis_server)
