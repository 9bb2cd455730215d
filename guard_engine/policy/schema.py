"""The strict raw shape of a policy file (policies/*.yaml, docs/policies.md, "Reference").

Every model forbids unknown keys, so a typo is an error that `guard_engine.yaml_model` reports
with the file, the line and the key. Checks that need no other file (known category names,
the audit sampling syntax, the policy text's whitespace) live here too, for the same reason:
a validator error carries its key path, so it gets a line number for free.
`compile.py` turns a validated `PolicyFile` into the runtime `CompiledPolicy`.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from guard_engine.taxonomy import DEFAULT_CATEGORIES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SAMPLED = re.compile(r"^sampled:(\d+(?:\.\d+)?|\.\d+)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _policy_name(value: str) -> str:
    # The name travels in the `x-guardline-policy` header and in metric labels.
    if not _NAME.match(value):
        raise PydanticCustomError(
            "policy_name",
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
        )
    return value


def _known_category(value: str) -> str:
    if value not in DEFAULT_CATEGORIES:
        close = difflib.get_close_matches(value, DEFAULT_CATEGORIES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PydanticCustomError(
            "unknown_category",
            "unknown category '{name}'{hint}; known categories: {known}",
            {"name": value, "hint": hint, "known": ", ".join(DEFAULT_CATEGORIES)},
        )
    return value


def _new_category(value: str) -> str:
    name = " ".join(value.split())
    if not name:
        raise PydanticCustomError("empty_category", "must not be empty")
    if name.casefold() in {c.casefold() for c in DEFAULT_CATEGORIES}:
        raise PydanticCustomError(
            "builtin_category",
            "'{name}' is already a built-in category; add only new ones",
            {"name": name},
        )
    return name


def normalize_text(value: str) -> str:
    """Normalize policy text so that invisible edits do not change what the guard sees.

    CRLF becomes LF, trailing spaces go, leading and trailing blank lines go. Indentation and
    inner blank lines stay: they are part of the text the model reads.
    """
    lines = [line.rstrip() for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def _policy_text(value: str) -> str:
    text = normalize_text(value)
    if not text:
        raise PydanticCustomError("empty_policy", "policy text is empty; omit the key instead")
    return text


def _audit_think(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as False; accept it for what the author meant.
    if value is False:
        return "off"
    if value is True:
        raise PydanticCustomError(
            "audit_think", "must be off, flagged, all or sampled:<rate> (quote 'on'-like words)"
        )
    return value


def _check_audit_think(value: str) -> str:
    if value in ("off", "flagged", "all"):
        return value
    m = _SAMPLED.match(value)
    if m is None or not 0.0 <= float(m.group(1)) <= 1.0:
        raise PydanticCustomError(
            "audit_think",
            "must be off, flagged, all or sampled:<rate> with a rate between 0 and 1, "
            "got '{value}'",
            {"value": value},
        )
    return value


PolicyName = Annotated[str, AfterValidator(_policy_name)]
KnownCategory = Annotated[str, AfterValidator(_known_category)]
NewCategory = Annotated[str, AfterValidator(_new_category)]
PolicyText = Annotated[str, AfterValidator(_policy_text)]
AuditThink = Annotated[str, BeforeValidator(_audit_think), AfterValidator(_check_audit_think)]


class AddedCategory(Strict):
    name: NewCategory
    description: str = ""


class CategoriesSpec(Strict):
    suppress: list[KnownCategory] = Field(default_factory=list)
    add: list[AddedCategory] = Field(default_factory=list)

    @field_validator("suppress")
    @classmethod
    def _canonical_order(cls, names: list[str]) -> list[str]:
        # Order and repetition carry no meaning: keep the taxonomy's order, so that
        # reordering the list does not change the policy's hash.
        return [c for c in DEFAULT_CATEGORIES if c in names]

    @model_validator(mode="after")
    def _consistent(self) -> CategoriesSpec:
        seen: set[str] = set()
        for item in self.add:
            key = item.name.casefold()
            if key in seen:
                raise PydanticCustomError(
                    "duplicate_category", "category '{name}' is added twice", {"name": item.name}
                )
            seen.add(key)
        if not self.add and set(self.suppress) >= set(DEFAULT_CATEGORIES):
            raise PydanticCustomError(
                "no_categories", "every category is suppressed and none is added"
            )
        return self


class InputSpec(Strict):
    enabled: bool = True
    parallel: bool = False
    scope: Literal["last_user", "conversation"] = "last_user"
    include_tool_results: bool = False
    include_system: bool = False
    allow_remote_images: bool = False
    on_uncheckable: Literal["refuse", "flag"] = "refuse"


class OutputSpec(Strict):
    enabled: bool = True
    stream: Literal["holdback", "buffer", "monitor"] = "holdback"
    holdback_chars: int = Field(default=400, ge=50)
    # The first check runs once this much text has arrived, so the first token waits for one
    # guard call instead of a whole window; later checks run every `holdback_chars`.
    first_window_chars: int = Field(default=1, ge=1)
    # Reasoning text (reasoning_content, reasoning, reasoning_details) is output: `check` judges
    # it with the answer, `strip` removes it from what the client receives. Never passed unseen.
    reasoning: Literal["check", "strip"] = "check"


class OnBlockSpec(Strict):
    input: Literal["error", "refusal"] = "error"
    output: Literal["refusal"] = "refusal"
    refusal: str = Field(default="Sorry, I can't help with that.", min_length=1)


class AuditSpec(Strict):
    think: AuditThink = "off"
    content: bool = False


class PolicyFile(Strict):
    """One policy file, exactly as written (after validation and text normalization)."""

    name: PolicyName
    description: str = Field(min_length=1)
    guard: str | None = Field(default=None, min_length=1)
    mode: Literal["binary", "categories", "think"] = "categories"
    policy: PolicyText | None = None
    categories: CategoriesSpec = CategoriesSpec()
    input: InputSpec = InputSpec()
    output: OutputSpec = OutputSpec()
    on_block: OnBlockSpec = OnBlockSpec()
    on_guard_error: Literal["closed", "open", "fallback"] = "closed"
    audit: AuditSpec = AuditSpec()
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    shadow: str | None = Field(default=None, min_length=1)
