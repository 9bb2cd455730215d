"""Test helper: a CompiledPolicy built directly (every field explicit), for adapter and
backend tests that must not depend on the policy compiler."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from guard_engine.policy.compiled import (
    AuditSettings,
    BlockSettings,
    CompiledPolicy,
    InputSettings,
    OutputSettings,
)
from guard_engine.taxonomy import DEFAULT_CATEGORIES


def make_policy(**overrides: Any) -> CompiledPolicy:
    base = CompiledPolicy(
        name="test",
        description="A test policy",
        hash8="0123abcd",
        guard=None,
        mode="categories",
        custom_policy=None,
        custom_taxonomy=None,
        categories=DEFAULT_CATEGORIES,
        suppressed=(),
        input=InputSettings(),
        output=OutputSettings(),
        on_block=BlockSettings(),
        on_guard_error="closed",
        audit=AuditSettings(),
        threshold=0.5,
        shadow=None,
        source="tests",
    )
    return replace(base, **overrides)
