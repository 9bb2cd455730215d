"""OpenAI's moderation categories, and how the guards' own categories map onto them.

`/v1/moderations` answers in OpenAI's CreateModerationResponse schema: every result carries
all thirteen category keys in `categories` (booleans), `category_scores` (numbers) and
`category_applied_input_types`, whatever the guard. The guard's categories (Nemotron's or
Llama Guard's names, or a policy's custom taxonomy) are translated here; a guard category
with no OpenAI counterpart (PII, profanity, copyright, ...) sets no OpenAI key but is still
reported in the result's `guardline.categories` and still makes the result `flagged`.

A subcategory implies its parent, as in OpenAI's own answers (`sexual/minors` -> `sexual`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# In the order of the spec's `required` list (openai-openapi, CreateModerationResponse).
OPENAI_CATEGORIES: Final = (
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

# Categories the spec lets apply to images; the others are text-only (`enum: [text]`).
IMAGE_CATEGORIES: Final = frozenset(
    {
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "violence",
        "violence/graphic",
    }
)

# Guard category (case-folded) -> OpenAI categories. Nemotron 3.5 (guard_engine.taxonomy)
# and Llama Guard 3 (guard_engine.adapters.llama_guard) names. Only clear matches are listed:
# a wrong key would tell a client something the guard did not say.
_FROM_GUARD: Final[dict[str, tuple[str, ...]]] = {
    # Nemotron 3.5 Content Safety
    "violence": ("violence",),
    "sexual": ("sexual",),
    "criminal planning/confessions": ("illicit",),
    "guns and illegal weapons": ("illicit/violent",),
    "controlled/regulated substances": ("illicit",),
    "suicide and self harm": ("self-harm",),
    "sexual (minor)": ("sexual/minors",),
    "hate/identity hate": ("hate",),
    "harassment": ("harassment",),
    "threat": ("harassment/threatening",),
    "fraud/deception": ("illicit",),
    "malware": ("illicit",),
    "illegal activity": ("illicit",),
    # Llama Guard 3
    "violent crimes": ("violence", "illicit/violent"),
    "non-violent crimes": ("illicit",),
    "sex crimes": ("sexual", "illicit"),
    "child exploitation": ("sexual/minors",),
    "indiscriminate weapons": ("illicit/violent",),
    "hate": ("hate",),
    "self-harm": ("self-harm",),
    "sexual content": ("sexual",),
}


def _parent(category: str) -> str | None:
    parent, sep, _ = category.partition("/")
    return parent if sep else None


def openai_categories(guard_categories: Iterable[str]) -> set[str]:
    """The OpenAI categories the guard's flagged categories stand for (parents included)."""
    out: set[str] = set()
    for name in guard_categories:
        for category in _FROM_GUARD.get(name.casefold(), ()):
            out.add(category)
            parent = _parent(category)
            if parent is not None:
                out.add(parent)
    return out


def applied_input_types(*, text: bool, images: bool) -> dict[str, list[str]]:
    """`category_applied_input_types`: which kinds of input each category's score covers."""
    out: dict[str, list[str]] = {}
    for category in OPENAI_CATEGORIES:
        kinds = ["text"] if text else []
        if images and category in IMAGE_CATEGORIES:
            kinds.append("image")
        out[category] = kinds
    return out
