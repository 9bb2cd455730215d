"""The rules of `guardline distill` that need no model: which audit records are training data
and with which label, the request/time split, and the choice of cascade thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from guard_engine.backends.distilled_head import MODEL_GUARD_ONLY
from guard_engine.distill.base_data import dequantize, quantize
from guard_engine.distill.thresholds import choose_thresholds, local_answers
from proxy.audit.store import AuditStore
from proxy.cli import main
from proxy.distill.split import split_by_time
from proxy.distill.trail import made_by_model_guard, select_decisions
from tests.audit.test_store import NOW, record
from tests.distill.configs import minimal_config

MODEL = frozenset({"nemotron"})


def test_only_model_guard_decisions_with_content_are_used() -> None:
    records = [
        record(request_id="a", content="hi", verdict="safe", guard="nemotron"),
        record(request_id="b", content="hi", verdict="safe", guard="local"),  # embedded
        record(request_id="c", content="hi", verdict="safe", guard="casc/local"),  # its own answer
        record(request_id="d", content="hi", verdict="unsafe", guard="casc/nemotron"),
        record(request_id="e", content="hi", verdict="safe", degraded=True),
        record(request_id="f", content=None, verdict="skipped"),
        record(request_id="g", content=None, verdict="safe"),
    ]
    selection = select_decisions(records, MODEL)
    assert [d.request_id for d in selection.decisions] == ["a", "d"]
    assert selection.without_content == 1
    assert sum(selection.skipped.values()) == 5
    assert selection.read == 7


def test_cascade_names() -> None:
    assert made_by_model_guard("nemotron", MODEL)
    assert made_by_model_guard("casc/nemotron", MODEL)
    assert not made_by_model_guard("casc/local", MODEL)
    assert not made_by_model_guard("local", MODEL)
    assert not made_by_model_guard("casc/other", MODEL)


def test_think_verdict_is_the_label_and_disagreements_are_held_back() -> None:
    agreeing = record(request_id="a", content="x", verdict="unsafe", think_verdict="unsafe")
    differing = record(
        request_id="b", content="y", verdict="safe", think_verdict="unsafe", disagreement=True
    )
    selection = select_decisions([agreeing, differing], MODEL)
    assert [(d.id, d.label) for d in selection.decisions] == [(agreeing.id, 1)]
    assert selection.disagreements == [differing]


def test_an_answer_is_paired_with_its_prompt() -> None:
    records = [
        record(request_id="r", stage="input", content="how do I bake bread", verdict="safe"),
        record(request_id="r", stage="output", content="Mix flour", verdict="safe", time=NOW + 1),
        record(request_id="s", stage="output", content="orphan", verdict="safe", time=NOW + 2),
    ]
    selection = select_decisions(records, MODEL)
    answer = selection.decisions[1]
    assert (answer.prompt, answer.response, answer.label) == ("how do I bake bread", "Mix flour", 0)
    assert len(selection.decisions) == 2  # the answer without an input record is left out


def test_split_keeps_requests_whole_and_orders_by_time() -> None:
    items = []
    for i in range(10):
        items.append(record(request_id=f"r{i}", time=NOW + 10 * i, content="p", verdict="safe"))
        items.append(record(request_id=f"r{i}", stage="output", time=NOW + 10 * i + 5, content="a"))
    split = split_by_time(select_decisions(items, MODEL).decisions, calibration=0.2, heldout=0.2)
    assert [len(split.train), len(split.calibration), len(split.heldout)] == [12, 4, 4]
    assert max(d.time for d in split.train) < min(d.time for d in split.calibration)
    assert max(d.time for d in split.calibration) < min(d.time for d in split.heldout)
    assert split.heldout_from == NOW + 80
    sides = [
        {d.request_id for d in part} for part in (split.train, split.calibration, split.heldout)
    ]
    assert not (sides[0] & sides[1]) and not (sides[1] & sides[2]) and not (sides[0] & sides[2])


def test_thresholds_meet_the_target_on_each_side() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.3).astype(np.float32)
    scores = np.clip(labels * 0.6 + rng.normal(0.2, 0.15, 2000), 0, 1).astype(np.float32)
    t = choose_thresholds(scores, labels, 0.99)
    assert 0.0 < t.low < t.high < 1.0
    assert labels[scores <= t.low].mean() <= 0.01
    assert labels[scores >= t.high].mean() >= 0.99
    measured = local_answers(scores, labels, t)
    assert measured.agreement is not None and measured.agreement >= 0.99
    assert 0 < measured.share < 1
    looser = local_answers(scores, labels, choose_thresholds(scores, labels, 0.9))
    assert looser.share > measured.share


def test_inseparable_labels_answer_nothing_locally() -> None:
    scores = np.full(100, 0.5, np.float32)
    labels = np.asarray([0, 1] * 50, np.float32)
    t = choose_thresholds(scores, labels, 0.99)
    assert local_answers(scores, labels, t).local == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_embeddings_keep_their_direction(seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(50, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    back = dequantize(*quantize(x))
    cos = (x * back).sum(axis=1) / np.linalg.norm(back, axis=1)
    assert cos.min() > 0.999


def test_disagreements_are_written_for_review_even_when_distill_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minimal_config(tmp_path, audit_path="audit.sqlite3")
    differing = record(
        policy="p@00000000",
        content="borderline",
        verdict="safe",
        think_verdict="unsafe",
        disagreement=True,
    )
    used = record(policy="p@00000000", request_id="r2", content="hello", verdict="safe")
    local = record(policy="p@00000000", request_id="r3", content="hi", guard="casc/local")
    with AuditStore(tmp_path / "audit.sqlite3") as store:
        store.insert_many([differing, used, local])
    review = tmp_path / "review.jsonl"
    argv = ["distill", "--config", str(tmp_path / "config.yaml"), "--policy", "p"]
    assert main([*argv, "--disagreements", str(review)]) == 2
    err = capsys.readouterr().err
    assert "too little data: 1 usable model-guard decisions" in err
    assert "1 not a model guard's decision" in err
    rows = [json.loads(line) for line in review.read_text().splitlines()]
    assert [(r["id"], r["content"], r["think_verdict"]) for r in rows] == [
        (differing.id, "borderline", "unsafe")
    ]
    # a time window reads only the decisions made in it
    assert main([*argv, "--until", "2026-01-01"]) == 2
    assert "0 usable model-guard decisions of policy 'p' (of 0 records read)" in (
        capsys.readouterr().err
    )


def test_the_ends_of_the_scale_mean_never() -> None:
    saturated = np.asarray([1.0, 1.0, 1e-18], np.float32)  # what a float32 sigmoid can give
    labels = np.asarray([1, 1, 0], np.float32)
    assert MODEL_GUARD_ONLY.local_label(1.0) is None
    assert MODEL_GUARD_ONLY.local_label(1e-18) is None
    assert local_answers(saturated, labels, MODEL_GUARD_ONLY).local == 0
    # a real cut at a saturated score stays a cut: it answers those scores locally
    many = np.asarray([1.0] * 50 + [0.01] * 50, np.float32)
    many_labels = np.asarray([1] * 50 + [0] * 50, np.float32)
    chosen = choose_thresholds(many, many_labels, 0.99)
    assert chosen.high < 1.0 and chosen.local_label(1.0) == "unsafe"
    assert local_answers(many, many_labels, chosen).local == 100
