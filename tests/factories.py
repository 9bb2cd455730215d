"""Builders for test values (policies, verdicts) with every field explicit and overridable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
from guard_engine.types import Verdict

# The `otel_env` fixture (tests/conftest.py): sets OTEL_* variables for one test.
OtelEnv = Callable[[Mapping[str, str]], None]


def make_policy(**overrides: Any) -> CompiledPolicy:
    policy = CompiledPolicy(
        name="test",
        description="test policy",
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
        source="tests/test.yaml",
    )
    return replace(policy, **overrides)


def make_verdict(**overrides: Any) -> Verdict:
    verdict = Verdict(
        stage="input",
        prompt_label="safe",
        response_label=None,
        categories=(),
        score=None,
        think=None,
        raw="User Safety: safe",
        latency_ms=1.0,
        cache_hit=False,
        degraded=False,
        guard="test",
        model="test-model",
        policy="test@0123abcd",
        mode="categories",
    )
    return replace(verdict, **overrides)
