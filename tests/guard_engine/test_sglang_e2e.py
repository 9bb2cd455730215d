"""End to end: SGLangBackend + NemotronAdapter against the real HTTP SGLang double on
127.0.0.1 (no mocked transport): verdict forms, images, output checks, timeouts, 429s,
garbage answers, a dead server and the circuit breaker."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from PIL import Image

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.adapters.registry import get_adapter
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.breaker import CircuitBreaker
from guard_engine.errors import GuardTimeout, GuardUnavailable, GuardUnparseable
from guard_engine.types import GuardImage, GuardRequest, Mode
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.factories import make_policy

MODEL = "nvidia/Nemotron-3.5-Content-Safety"
WORDS = {"kill": "Violence", "bomb": "Guns and Illegal Weapons", "ssn": "PII/Privacy"}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double(unsafe_words=WORDS) as pair:
        yield pair


@pytest.fixture
def double(served: tuple[str, SGLangDouble]) -> SGLangDouble:
    _url, rec = served
    rec.reset(unsafe_words=WORDS)
    return rec


def _backend(url: str, **kw: Any) -> SGLangBackend:
    args: dict[str, Any] = {"timeout_ms": 5000, "max_concurrency": 4, **kw}
    return SGLangBackend(
        name="nemotron", base_url=url, model=MODEL, adapter=NemotronAdapter(), **args
    )


@pytest.fixture
async def backend(served: tuple[str, SGLangDouble], double: SGLangDouble) -> AsyncIterator[Any]:
    b = _backend(served[0] + "/v1")
    yield b
    await b.aclose()


async def _check(b: SGLangBackend, mode: Mode = "categories", **request: Any) -> Any:
    return await b.check(GuardRequest(**{"prompt": "hello", **request}), make_policy(), mode=mode)


def _png() -> GuardImage:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    data = buf.getvalue()
    return GuardImage(data=data, mime="image/png", sha256=hashlib.sha256(data).hexdigest())


async def test_safe_and_unsafe(backend: SGLangBackend) -> None:
    safe = await _check(backend, prompt="How do I bake bread?")
    assert safe.verdict.prompt_label == "safe"
    assert safe.raw == "User Safety: safe"
    unsafe = await _check(backend, prompt="How do I build a BOMB?")
    assert unsafe.verdict.prompt_label == "unsafe"
    assert unsafe.verdict.categories == ("Guns and Illegal Weapons",)


async def test_binary_mode_has_no_categories(backend: SGLangBackend, double: SGLangDouble) -> None:
    result = await _check(backend, "binary", prompt="kill it")
    assert result.verdict.prompt_label == "unsafe"
    assert result.verdict.categories == ()
    assert double.requests[-1]["chat_template_kwargs"]["request_categories"] == "/no_categories"


@pytest.mark.parametrize("newline", [True, False])
async def test_think_mode(backend: SGLangBackend, double: SGLangDouble, newline: bool) -> None:
    double.configure(think_newline=newline)
    result = await _check(backend, "think", prompt="my ssn is 123")
    assert result.verdict.prompt_label == "unsafe"
    assert result.verdict.categories == ("PII/Privacy",)
    assert result.verdict.think is not None and "PII/Privacy" in result.verdict.think
    sent = double.requests[-1]
    assert sent["chat_template_kwargs"]["enable_thinking"] is True
    assert sent["max_tokens"] == 1024


async def test_images_reach_the_guard_as_data_urls(
    backend: SGLangBackend, double: SGLangDouble
) -> None:
    image = _png()
    double.configure(image_category="Violence")
    result = await _check(backend, prompt="what is in this picture?", images=(image,))
    assert result.verdict.prompt_label == "unsafe"
    content = double.requests[-1]["messages"][0]["content"]
    assert content[0] == {"type": "image_url", "image_url": {"url": image.data_url()}}
    assert content[1]["type"] == "text"


async def test_output_check_and_shared_prefix(backend: SGLangBackend, double: SGLangDouble) -> None:
    inp = await _check(backend, prompt="tell me a story")
    out = await _check(backend, prompt="tell me a story", response="then he killed them all")
    assert inp.verdict.prompt_label == "safe"
    assert (out.verdict.prompt_label, out.verdict.response_label) == ("safe", "unsafe")
    in_text = double.requests[0]["messages"][0]["content"][-1]["text"]
    out_text = double.requests[1]["messages"][0]["content"][-1]["text"]
    assert out_text.startswith(in_text + "\nresponse: agent:  ### Answer: ")


async def test_traceparent_reaches_the_guard(backend: SGLangBackend, double: SGLangDouble) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await backend.check(
        GuardRequest(prompt="hi"), make_policy(), mode="binary", headers={"traceparent": tp}
    )
    assert double.headers[-1]["traceparent"] == tp


async def test_slow_guard_times_out(served: tuple[str, SGLangDouble], double: SGLangDouble) -> None:
    double.configure(delay_ms=2000)
    b = _backend(served[0], timeout_ms=100)
    with pytest.raises(GuardTimeout):
        await _check(b)
    await b.aclose()


async def test_429_then_success(backend: SGLangBackend, double: SGLangDouble) -> None:
    double.configure(fail_first=[429, 503], retry_after=0)
    result = await _check(backend, prompt="hi")
    assert result.verdict.prompt_label == "safe"
    assert len(double.requests) == 3


@pytest.mark.parametrize(
    "knobs", [{"garbage": "I'm sorry, I can't help with that."}, {"non_json": True}]
)
async def test_garbage_is_unparseable(
    backend: SGLangBackend, double: SGLangDouble, knobs: dict[str, Any]
) -> None:
    double.configure(**knobs)
    with pytest.raises(GuardUnparseable) as info:
        await _check(backend)
    assert info.value.raw


async def test_truncated_think_is_unparseable(backend: SGLangBackend, double: SGLangDouble) -> None:
    double.configure(truncate_think=True)
    with pytest.raises(GuardUnparseable, match="truncated"):
        await _check(backend, "think")


async def test_dead_server_is_unavailable() -> None:
    with start_sglang_double() as (url, rec):
        b = _backend(url)
        assert (await _check(b)).verdict.prompt_label == "safe"
        rec.kill()
        with pytest.raises(GuardUnavailable, match="connect"):
            await _check(b)
        health = await b.health()
        assert not health.ok
        await b.aclose()


async def test_breaker_opens_and_recovers(
    served: tuple[str, SGLangDouble], double: SGLangDouble
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=30, clock=lambda: now[0])
    b = _backend(served[0], breaker=breaker)
    double.configure(status=503, retry_after=3600)
    for _ in range(2):
        with pytest.raises(GuardUnavailable, match="503"):
            await _check(b)
    with pytest.raises(GuardUnavailable, match="circuit open"):
        await _check(b)
    assert len(double.requests) == 2  # rejected without reaching the guard
    assert not (await b.health()).ok
    double.configure(status=None)
    now[0] = 30.0
    assert (await _check(b)).verdict.prompt_label == "safe"
    assert breaker.describe() == "closed"
    await b.aclose()


async def test_health(served: tuple[str, SGLangDouble], double: SGLangDouble) -> None:
    b = _backend(served[0])
    assert (await b.health()).ok
    double.configure(healthy=False)
    health = await b.health()
    assert not health.ok
    assert "503" in health.detail
    await b.aclose()


async def test_double_speaks_the_openai_api(served: tuple[str, SGLangDouble]) -> None:
    """The official client accepts the double's answers (so the double is OpenAI-shaped)."""
    client = openai.AsyncOpenAI(base_url=served[0] + "/v1", api_key="none", max_retries=0)
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "a bomb"}]}],
        temperature=0,
        max_tokens=128,
        extra_body={"chat_template_kwargs": {"request_categories": "/categories"}},
    )
    assert completion.choices[0].message.content == (
        "User Safety: unsafe\nSafety Categories: Guns and Illegal Weapons"
    )
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    await client.close()


async def test_llama_guard_adapter_end_to_end(
    served: tuple[str, SGLangDouble], double: SGLangDouble
) -> None:
    """The second adapter through the same backend (the double answering as Llama Guard 3)."""
    double.reset(guard_format="llama-guard-3", unsafe_words={"bomb": "S9", "kill": "S1"})
    b = SGLangBackend(
        name="llama",
        base_url=served[0],
        model="meta-llama/Llama-Guard-3-8B",
        adapter=get_adapter("llama-guard-3"),
        timeout_ms=5000,
        max_concurrency=2,
    )
    policy = make_policy()
    inp = await b.check(GuardRequest(prompt="how to build a bomb"), policy, mode="binary")
    assert (inp.verdict.prompt_label, inp.verdict.categories) == (
        "unsafe",
        ("Indiscriminate Weapons",),
    )
    out = await b.check(
        GuardRequest(prompt="how to build a bomb", response="I can't help with that."),
        policy,
        mode="binary",
    )
    assert out.verdict.response_label == "safe"  # judges only the last (assistant) turn
    assert double.requests[-1]["messages"][-1]["role"] == "assistant"
    devtools = make_policy(suppressed=("Violence",))
    killed = await b.check(GuardRequest(prompt="kill the process"), devtools, mode="binary")
    assert killed.verdict.prompt_label == "safe"  # S1 excluded via excluded_category_keys
    assert double.requests[-1]["chat_template_kwargs"] == {"excluded_category_keys": ["S1"]}
    await b.aclose()
