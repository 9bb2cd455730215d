"""Builders for test values (policies, verdicts) with every field explicit and overridable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from guard_engine.backends.distilled_head import DistillMeta, Thresholds, save_distilled
from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS, HeadSet, load_heads
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


def make_head_file(
    path: Path,
    *,
    prompt: Thresholds,
    response: Thresholds,
    heads: HeadSet | None = None,
    policy: str = "test@0123abcd",
) -> str:
    """A distilled head file (as `guardline distill` writes) holding `heads` (default: the
    shipped embedded heads) with the given cascade thresholds; returns its fingerprint."""
    meta = DistillMeta(
        policy=policy,
        tenant=None,
        window=("2026-11-01T00:00:00.000Z", "2026-11-29T00:00:00.000Z"),
        counts={"train": 800, "heldout": 200},
        agreement={"overall": 0.99},
        prompt_thresholds=prompt,
        response_thresholds=response,
        target_agreement=0.99,
        local_share={"input": 0.8, "output": 0.7},
        created="2026-11-29T12:00:00.000Z",
    )
    return save_distilled(heads or load_heads(DEFAULT_WEIGHTS), meta, path)
