"""The guard taxonomies -> OpenAI's moderation categories (proxy.moderation.openai_categories)."""

from __future__ import annotations

from guard_engine.adapters.llama_guard import CATEGORIES as LLAMA_GUARD
from guard_engine.taxonomy import DEFAULT_CATEGORIES as NEMOTRON
from proxy.moderation.openai_categories import (
    OPENAI_CATEGORIES,
    applied_input_types,
    openai_categories,
)


def test_nemotron_and_llama_guard_names_map_case_insensitively() -> None:
    assert openai_categories(["Violence"]) == {"violence"}
    assert openai_categories(["sexual (MINOR)"]) == {"sexual/minors", "sexual"}
    assert openai_categories(["Threat"]) == {"harassment/threatening", "harassment"}
    assert openai_categories(["Guns and Illegal Weapons"]) == {"illicit/violent", "illicit"}
    assert openai_categories(["Violent Crimes"]) == {"violence", "illicit/violent", "illicit"}
    assert openai_categories(["Child Exploitation"]) == {"sexual/minors", "sexual"}


def test_categories_without_an_openai_counterpart_map_to_nothing() -> None:
    assert openai_categories(["PII/Privacy", "Profanity", "Elections", "my custom"]) == set()


def test_every_mapped_key_is_one_of_openais() -> None:
    mapped = openai_categories([*NEMOTRON, *LLAMA_GUARD.values()])
    assert mapped <= set(OPENAI_CATEGORIES)
    # The main harms of both taxonomies land somewhere.
    assert {"violence", "sexual", "sexual/minors", "hate", "harassment", "self-harm"} <= mapped


def test_applied_input_types_follow_the_spec() -> None:
    text_only = applied_input_types(text=True, images=False)
    assert set(text_only) == set(OPENAI_CATEGORIES)
    assert all(kinds == ["text"] for kinds in text_only.values())
    with_images = applied_input_types(text=True, images=True)
    assert with_images["violence"] == ["text", "image"]
    assert with_images["hate"] == ["text"]  # the spec allows only text for hate
    assert applied_input_types(text=False, images=True)["sexual/minors"] == []
