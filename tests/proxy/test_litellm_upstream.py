"""LiteLLMUpstream against a real OpenAI-compatible server on 127.0.0.1 via litellm's
`openai/<model>` provider: no network, no mocks; litellm does its real work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from proxy.config_schema import LiteLLMUpstreamConfig
from proxy.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.upstreams.litellm_upstream import (
    LiteLLMUpstream,
    PermissionDenied,
    load_litellm,
    translate_error,
)
from tests.doubles.litellm_target import LiteLLMTarget, ServerThread

# litellm's own pydantic models warn on import and first stream; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:pydantic"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm"),
]


@pytest.fixture(scope="module")
def litellm() -> Any:
    return load_litellm()  # the seconds-long import, once per module


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[LiteLLMTarget, str]]:
    double = LiteLLMTarget()
    with ServerThread(double.app) as server:
        yield double, server.base_url


def make(base_url: str, **kw: Any) -> LiteLLMUpstream:
    fields: dict[str, Any] = {"model": "openai/target-model", "api_key": "cfg-key"} | kw
    return LiteLLMUpstream(
        "target", LiteLLMUpstreamConfig(type="litellm", api_base=base_url, **fields)
    )


@pytest.fixture
async def upstream(
    litellm: Any, target: tuple[LiteLLMTarget, str]
) -> AsyncIterator[LiteLLMUpstream]:
    up = make(target[1])
    yield up
    await up.aclose()  # close litellm's clients on this test's own event loop


def user(text: str) -> dict[str, Any]:
    return {"model": "client-name", "messages": [{"role": "user", "content": text}]}


async def test_complete_returns_openai_completion(
    upstream: LiteLLMUpstream, target: tuple[LiteLLMTarget, str]
) -> None:
    double = target[0]
    body = user("hello there") | {
        "temperature": 0.2,
        "vendor_field": {"x": 1},
        "api_base": "http://attacker.invalid",  # must not steer litellm
        "mock_response": "fake",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    result = await upstream.complete(body)
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"] == "echo: hello there"
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["total_tokens"] == 5
    assert "provider_specific_fields" not in result["choices"][0]["message"]
    sent = double.requests[-1]
    assert sent["model"] == "target-model"  # the configured provider model, not the client's
    assert sent["temperature"] == 0.2 and sent["vendor_field"] == {"x": 1}
    assert "api_base" not in sent and "mock_response" not in sent
    assert sent["tools"] == body["tools"]
    assert double.authorizations[-1] == "Bearer cfg-key"


async def test_bring_your_own_key_when_none_configured(
    litellm: Any, target: tuple[LiteLLMTarget, str]
) -> None:
    up = make(target[1], api_key="")
    try:
        await up.complete(user("hi"), api_key="client-key")
    finally:
        await up.aclose()
    assert target[0].authorizations[-1] == "Bearer client-key"


async def test_stream_yields_chunks_and_usage(
    upstream: LiteLLMUpstream, target: tuple[LiteLLMTarget, str]
) -> None:
    body = user("one two three") | {"stream": True, "stream_options": {"include_usage": True}}
    chunks = [c async for c in upstream.stream(body)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == "echo: one two three"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 7
    assert chunks[-1]["choices"] == []
    assert target[0].requests[-1]["stream"] is True


async def test_stream_closed_early_does_not_raise(upstream: LiteLLMUpstream) -> None:
    stream = upstream.stream(user("a b c d e f") | {"stream": True})
    first = await anext(stream)
    assert first["choices"][0]["delta"]["content"] == "echo:"
    await stream.aclose()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (404, ModelNotFound),
        (429, RateLimited),
        (500, UpstreamError),
        (503, UpstreamError),
    ],
)
async def test_error_status_is_translated(
    upstream: LiteLLMUpstream, status: int, error: type[GatewayError]
) -> None:
    with pytest.raises(error) as e:
        await upstream.complete(user(f"status:{status}"))
    assert e.value.message.startswith("upstream 'target': ")
    assert "litellm" not in e.value.message


async def test_stream_error_is_translated(upstream: LiteLLMUpstream) -> None:
    with pytest.raises(RateLimited) as e:
        async for _ in upstream.stream(user("status:429") | {"stream": True}):
            pass
    assert e.value.status == 429
    assert e.value.envelope()["error"]["type"] == "rate_limit_error"


async def test_upstream_dying_mid_stream_raises_not_hangs(upstream: LiteLLMUpstream) -> None:
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError):
        async for chunk in upstream.stream(user("die:1") | {"stream": True}):
            received.append(chunk)
    assert received and received[0]["choices"][0]["delta"]["content"] == "echo:"


async def test_timeout_and_connection_refused(
    litellm: Any, target: tuple[LiteLLMTarget, str]
) -> None:
    slow = make(target[1], timeout_s=0.2)
    with pytest.raises(UpstreamTimeout):
        await slow.complete(user("sleep:1"))
    await slow.aclose()
    dead = make("http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamError) as e:
        await dead.complete(user("hi"))
    assert e.value.status == 502
    await dead.aclose()


def test_translate_special_cases(litellm: Any) -> None:
    args = {"message": "too long", "model": "m", "llm_provider": "p"}
    ctx = translate_error("u", litellm.ContextWindowExceededError(**args))
    assert isinstance(ctx, InvalidRequest) and ctx.code == "context_length_exceeded"
    policy = translate_error("u", litellm.ContentPolicyViolationError(**args))
    assert isinstance(policy, InvalidRequest) and policy.code == "content_policy_violation"
    assert isinstance(
        translate_error(
            "u",
            litellm.PermissionDeniedError(
                message="no", llm_provider="p", model="m", response=_response(403)
            ),
        ),
        PermissionDenied,
    )
    budget = translate_error("u", litellm.BudgetExceededError(current_cost=2, max_budget=1))
    assert isinstance(budget, RateLimited)
    odd = translate_error("u", ValueError("secret detail"))
    assert isinstance(odd, UpstreamError) and "secret detail" not in odd.message


def _response(status: int) -> Any:
    import httpx

    return httpx.Response(status, request=httpx.Request("POST", "http://x"))
