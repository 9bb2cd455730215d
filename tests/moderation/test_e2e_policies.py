"""Policies per route and tenant, hot reload, shadow policies, and /v1/moderations."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.doubles.sglang_server import SGLangDouble
from tests.moderation.conftest import Gateway

UNSAFE = [{"role": "user", "content": "where do I buy a bomb"}]
SAFE = [{"role": "user", "content": "Hello there"}]


def test_two_tenants_get_two_policies(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.policy(
        "kids",
        policy="Disallowed Behaviors:\n- dating advice\n",
        on_block={"input": "refusal", "refusal": "Let's talk about homework!"},
    )
    gateway.policy(
        "bank",
        categories={
            "add": [{"name": "Investment advice", "description": "telling someone what to buy"}]
        },
    )
    gateway.start(
        routes=[
            {"name": "kids", "tenants": ["kidsapp"], "upstream": "double", "policy": "kids.yaml"},
            {"name": "bank", "tenants": ["bank"], "upstream": "double", "policy": "bank.yaml"},
        ],
        tenants={"kidsapp": {"keys": ["kid-key"]}, "bank": {"keys": ["bank-key"]}},
    )
    kids = gateway.client("kid-key").chat.completions.with_raw_response.create(
        model="m", messages=UNSAFE
    )
    assert kids.headers["x-guardline-policy"].startswith("kids@")
    assert kids.parse().choices[0].message.content == "Let's talk about homework!"
    kwargs = guard.requests[-1]["chat_template_kwargs"]
    assert "dating advice" in kwargs["custom_policy"]

    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client("bank-key").chat.completions.create(model="m", messages=UNSAFE)
    assert caught.value.response.headers["x-guardline-policy"].startswith("bank@")
    assert "Investment advice" in guard.requests[-1]["chat_template_kwargs"]["custom_taxonomy"]

    with pytest.raises(openai.AuthenticationError):
        gateway.client("wrong").chat.completions.create(model="m", messages=SAFE)


def _policy_ref(gateway: Gateway) -> str:
    raw = gateway.client().chat.completions.with_raw_response.create(model="m", messages=SAFE)
    return raw.headers["x-guardline-policy"]


def _eventually(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_hot_reload_valid_then_invalid_edit(gateway: Gateway) -> None:
    url = gateway.start(mode="categories")
    first = _policy_ref(gateway)
    path: Path = gateway.tmp / "main.yaml"
    path.write_text(path.read_text().replace("mode: categories", "mode: binary"))
    assert _eventually(lambda: _policy_ref(gateway) != first)
    second = _policy_ref(gateway)
    path.write_text(path.read_text() + "surprise_key: 1\n")
    assert _eventually(
        lambda: httpx.get(f"{url}/readyz").json()["checks"]["policies"]["rejected_edits"]
    )
    rejected = httpx.get(f"{url}/readyz").json()["checks"]["policies"]["rejected_edits"]
    assert "surprise_key" in next(iter(rejected.values()))
    assert _policy_ref(gateway) == second  # the last good version keeps serving


def test_shadow_policy_disagreement_is_counted(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.policy("candidate", guard="local", mode="binary", threshold=0.999)
    gateway.start(shadow="candidate.yaml")
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(model="m", messages=UNSAFE)
    # The enforced guard flagged it; the candidate (the embedded guard at an extreme
    # threshold) did not: one disagreement on the input stage.
    assert _eventually(lambda: _shadow_counts(gateway) is not None)


def _shadow_counts(gateway: Gateway) -> list[int] | None:
    metrics = httpx.get(f"{gateway.url}/readyz").json()["checks"].get("shadow", {})
    for key, counts in metrics.items():
        if key.endswith(":input") and counts["disagreements"] >= 1:
            return [counts["compared"], counts["disagreements"]]
    return None


def test_moderations_endpoint(gateway: Gateway) -> None:
    gateway.start()
    client = gateway.client()
    result = client.moderations.create(input=["have a nice day", "I will kill you"])
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.violence is True
    raw = httpx.post(
        f"{gateway.url}/v1/moderations",
        json={"input": "I will kill you"},
        headers={"authorization": "Bearer x"},
    ).json()
    assert raw["results"][0]["categories"]["violence"] is True
    assert raw["results"][0]["category_scores"]["violence"] == 1.0
    assert raw["results"][0]["guardline"]["categories"] == ["Violence"]
    bad = httpx.post(f"{gateway.url}/v1/moderations", json={"input": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_async_client_works_too(gateway: Gateway) -> None:
    gateway.start()

    async def run() -> str | None:
        async with gateway.async_client() as client:
            completion = await client.chat.completions.create(model="m", messages=SAFE)
            return completion.choices[0].message.content

    assert asyncio.run(run()) == "double says: Hello there"
