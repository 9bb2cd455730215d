"""A model adapter owns everything model-specific: how a request is rendered into an
OpenAI chat-completions body, and how the model's text answer is parsed into a verdict.

Adding a guard model is one adapter module and its tests; backends own transport only.
"""

from __future__ import annotations

from typing import Any, Protocol

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode, ParsedVerdict


class Adapter(Protocol):
    name: str

    def build_body(
        self, request: GuardRequest, policy: CompiledPolicy, *, model: str, mode: Mode
    ) -> dict[str, Any]:
        """The JSON body for POST /v1/chat/completions."""
        ...

    def parse(self, text: str, *, has_response: bool) -> ParsedVerdict:
        """Read the model's answer; raise GuardUnparseable when there is no verdict in it."""
        ...
