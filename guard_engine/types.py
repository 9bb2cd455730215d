"""The values that cross the guard_engine boundary: what to check, and what the guard decided."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Label = Literal["safe", "unsafe"]
Mode = Literal["binary", "categories", "think"]
Stage = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class GuardImage:
    """An image normalized for the guard (RGB, longest side <= 896 px, re-encoded).

    `sha256` is the hash of the normalized bytes: it is part of the verdict cache key.
    `param` says where the image was in the client's request (e.g. `messages[2].content[0]`).
    """

    data: bytes
    mime: str
    sha256: str
    param: str = ""

    def data_url(self) -> str:
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier conversation turn sent as context (input.scope: conversation)."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class GuardRequest:
    """What one guard call judges.

    `prompt` is the user text (last user message, or more by policy). `response` is the
    assistant's text plus its tool-call arguments; when it is set this is an output check.
    """

    prompt: str
    images: tuple[GuardImage, ...] = ()
    response: str | None = None
    context: tuple[Turn, ...] = ()

    @property
    def stage(self) -> Stage:
        return "input" if self.response is None else "output"


@dataclass(frozen=True, slots=True)
class ParsedVerdict:
    """What an adapter read out of a guard's answer (or what the embedded guard decided)."""

    prompt_label: Label
    response_label: Label | None = None
    categories: tuple[str, ...] = ()
    think: str | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's decision for one GuardRequest under one policy.

    `flagged` is what callers act on: for an input check the prompt label, for an output check
    the response label (a safe refusal to an unsafe prompt is not flagged).
    """

    stage: Stage
    prompt_label: Label
    response_label: Label | None
    categories: tuple[str, ...]
    score: float | None
    think: str | None
    raw: str
    latency_ms: float
    cache_hit: bool
    degraded: bool
    guard: str
    model: str
    policy: str  # name@hash8
    mode: Mode

    @property
    def flagged(self) -> bool:
        if self.stage == "output":
            return self.response_label == "unsafe"
        return self.prompt_label == "unsafe"

    @property
    def label(self) -> Label:
        return "unsafe" if self.flagged else "safe"
