"""The distilled head file: weights readable by the embedded guard, metadata round-trips,
unknown formats refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guard_engine.backends.distilled_head import (
    DistillMeta,
    Thresholds,
    load_distilled,
    save_distilled,
)
from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS, load_heads


def _meta() -> DistillMeta:
    return DistillMeta(
        policy="shop@0123abcd",
        tenant=None,
        window=("2026-11-01T00:00:00.000Z", "2026-11-29T00:00:00.000Z"),
        counts={"train": 800, "heldout": 200},
        agreement={"overall": 0.991},
        prompt_thresholds=Thresholds(0.1, 0.9),
        response_thresholds=Thresholds(0.05, 0.95),
        target_agreement=0.99,
        local_share={"input": 0.8, "output": 0.7},
        created="2026-11-30T00:00:00.000Z",
    )


def test_round_trip_and_the_embedded_guard_reads_the_weights(tmp_path: Path) -> None:
    heads = load_heads(DEFAULT_WEIGHTS)
    path = tmp_path / "shop.npz"
    fingerprint = save_distilled(heads, _meta(), path)
    loaded = load_distilled(path)
    assert loaded.meta == _meta()
    assert loaded.fingerprint == fingerprint and len(fingerprint) == 12
    assert np.array_equal(loaded.heads.prompt.w1, heads.prompt.w1)
    # load_heads (what EmbeddedBackend uses) ignores the metadata
    assert np.array_equal(load_heads(path).response.w1, heads.response.w1)
    assert not (tmp_path / "shop.npz.tmp").exists()


def test_plain_head_files_and_unknown_versions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a distilled head file"):
        load_distilled(DEFAULT_WEIGHTS)
    text = _meta().to_json().replace('"version": 1', '"version": 99')
    with pytest.raises(ValueError, match="format version 99"):
        DistillMeta.from_json(text, source="x")


def test_thresholds() -> None:
    t = Thresholds(0.2, 0.8)
    assert [t.local_label(s) for s in (0.1, 0.2, 0.5, 0.8, 0.95)] == [
        "safe",
        "safe",
        None,
        "unsafe",
        "unsafe",
    ]
    with pytest.raises(ValueError):
        Thresholds(0.9, 0.1)
