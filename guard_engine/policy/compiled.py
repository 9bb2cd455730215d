"""The runtime form of a policy: immutable, compiled once, identified by `name@hash8`.

The raw file shape lives in `schema.py`; `compile.py` turns one into the other. Everything on
the request path reads these objects and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from guard_engine.types import Mode

Scope = Literal["last_user", "conversation"]
StreamMode = Literal["holdback", "buffer", "monitor"]
InputBlock = Literal["error", "refusal"]
GuardErrorMode = Literal["closed", "open", "fallback"]
Uncheckable = Literal["refuse", "flag"]
ReasoningMode = Literal["check", "strip"]


@dataclass(frozen=True, slots=True)
class InputSettings:
    enabled: bool = True
    parallel: bool = False
    scope: Scope = "last_user"
    include_tool_results: bool = False
    include_system: bool = False
    # http(s) image URLs are fetched only when the policy allows it; data: URLs always work.
    allow_remote_images: bool = False
    # What to do with content the guard cannot check (unknown part types, audio, files).
    on_uncheckable: Uncheckable = "refuse"


@dataclass(frozen=True, slots=True)
class OutputSettings:
    enabled: bool = True
    stream: StreamMode = "holdback"
    holdback_chars: int = 400
    first_window_chars: int = 1
    # check: reasoning is judged as output; strip: removed from what the client receives.
    reasoning: ReasoningMode = "check"


@dataclass(frozen=True, slots=True)
class BlockSettings:
    input: InputBlock = "error"
    output: Literal["refusal"] = "refusal"
    refusal: str = "Sorry, I can't help with that."


@dataclass(frozen=True, slots=True)
class AuditSettings:
    # off | flagged | all | sampled (with think_rate)
    think: Literal["off", "flagged", "sampled", "all"] = "off"
    think_rate: float = 0.0
    # Store the checked text in audit records (off by default: it is user data).
    content: bool = False


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    description: str
    hash8: str
    guard: str | None  # None: the config's default_guard
    mode: Mode
    # Nemotron's `custom_policy` (natural-language policy text, byte-stable), or None.
    custom_policy: str | None
    # Nemotron's `custom_taxonomy` (category list text), or None for the built-in taxonomy.
    custom_taxonomy: str | None
    # The categories in force (built-in minus suppressed plus added), names as the guard emits.
    categories: tuple[str, ...]
    suppressed: tuple[str, ...]
    input: InputSettings
    output: OutputSettings
    on_block: BlockSettings
    on_guard_error: GuardErrorMode
    audit: AuditSettings
    # Score threshold for guards that report a score (the embedded guard).
    threshold: float
    shadow: str | None  # path of a policy run in monitor mode beside this one
    source: str  # the file it came from

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.hash8}"
