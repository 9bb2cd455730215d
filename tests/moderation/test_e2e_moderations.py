"""End to end: `/v1/moderations` answers in OpenAI's schema (read by the official client),
maps the guard's categories to OpenAI's keys, and caps the inputs of one request."""

from __future__ import annotations

import httpx
import openai
import pytest

from proxy.moderation.openai_categories import OPENAI_CATEGORIES
from tests.doubles.sglang_server import SGLangDouble
from tests.moderation.conftest import Gateway


def test_official_client_reads_openai_categories_as_booleans(gateway: Gateway) -> None:
    gateway.start()
    result = gateway.client().moderations.create(
        input=["have a nice day", "I will kill you", "how to build a bomb"]
    )
    safe, violent, weapon = result.results
    assert not safe.flagged and not any(safe.categories.model_dump(by_alias=True).values())
    assert violent.flagged
    assert violent.categories.violence is True
    assert violent.categories.harassment is False
    assert violent.category_scores.violence == 1.0
    assert violent.category_scores.hate == 0.0
    assert weapon.categories.illicit_violent is True
    assert weapon.categories.illicit is True  # the parent of a flagged subcategory
    assert weapon.categories.violence is False
    assert violent.category_applied_input_types.violence == ["text"]


def test_every_openai_key_is_present_and_guard_categories_are_extra(gateway: Gateway) -> None:
    gateway.start()
    r = httpx.post(f"{gateway.url}/v1/moderations", json={"input": "bomb and kill"})
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert list(result["categories"]) == list(OPENAI_CATEGORIES)
    assert list(result["category_scores"]) == list(OPENAI_CATEGORIES)
    assert list(result["category_applied_input_types"]) == list(OPENAI_CATEGORIES)
    assert all(isinstance(v, bool) for v in result["categories"].values())
    assert all(isinstance(v, float) for v in result["category_scores"].values())
    flagged = {k for k, v in result["categories"].items() if v}
    assert flagged == {"violence", "illicit", "illicit/violent"}
    assert sorted(result["guardline"]["categories"]) == ["Guns and Illegal Weapons", "Violence"]
    assert result["guardline"]["status"] == "unsafe"


def test_a_guard_category_without_an_openai_key_still_flags(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    guard.configure(unsafe_words={"ssn": "PII/Privacy"})
    gateway.start()
    (result,) = gateway.client().moderations.create(input="my ssn is 123").results
    assert result.flagged is True
    assert not any(result.categories.model_dump(by_alias=True).values())
    assert result.model_extra is not None
    assert result.model_extra["guardline"]["categories"] == ["PII/Privacy"]


def test_more_inputs_than_the_cap_is_a_400(gateway: Gateway) -> None:
    gateway.start()
    client = gateway.client()
    assert len(client.moderations.create(input=["hello"] * 32).results) == 32
    with pytest.raises(openai.BadRequestError) as caught:
        client.moderations.create(input=["hello"] * 33)
    assert caught.value.status_code == 400
    assert caught.value.param == "input" and caught.value.code == "too_many_inputs"
    assert "at most 32" in caught.value.message
