"""THINK re-checks: which decisions are re-checked, in the background, and what is recorded."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest

from guard_engine.errors import GuardUnavailable
from guard_engine.policy.compiled import AuditSettings, CompiledPolicy
from guard_engine.types import GuardRequest, Verdict
from proxy.audit.record import AuditRecord
from proxy.audit.store import AuditStore
from proxy.audit.think import ThinkScheduler
from proxy.audit.writer import AuditWriter
from proxy.observability.metrics import GatewayMetrics
from tests.factories import make_policy, make_verdict

UNSAFE = make_verdict(prompt_label="unsafe", categories=("Violence",))
SAFE = make_verdict()


class FakeThinkGuard:
    """Answers like engine.check(..., mode="think"): a verdict with a reasoning trace."""

    def __init__(self, label: str = "unsafe", *, fail: bool = False) -> None:
        self.label = label
        self.fail = fail
        self.calls: list[GuardRequest] = []
        self.running = 0
        self.max_running = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, request: GuardRequest, policy: CompiledPolicy) -> Verdict:
        self.calls.append(request)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
            if self.fail:
                raise GuardUnavailable("connection refused", guard="nemotron")
            return make_verdict(
                prompt_label=self.label,
                think=f"<think>the prompt is {self.label}</think>",
                mode="think",
                latency_ms=250.0,
                policy=policy.ref,
            )
        finally:
            self.running -= 1


def policy(think: str, rate: float = 0.0) -> CompiledPolicy:
    return make_policy(audit=AuditSettings(think=think, think_rate=rate))  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    return AuditStore(tmp_path / "audit.sqlite3")


def _submit(writer: AuditWriter, verdict: Verdict, prompt: str = "p") -> tuple[str, GuardRequest]:
    request = GuardRequest(prompt=prompt)
    rec = AuditRecord.from_verdict(verdict, request, request_id="r", route="default")
    writer.submit(rec)
    return rec.id, request


async def test_flagged_rechecks_only_flagged_decisions_and_records_the_trace(
    store: AuditStore,
) -> None:
    writer = AuditWriter(store, queue_size=100)
    metrics = GatewayMetrics()
    guard = FakeThinkGuard(label="unsafe")
    think = ThinkScheduler(guard, writer, metrics)
    flagged_id, flagged_request = _submit(writer, UNSAFE, "bad")
    safe_id, safe_request = _submit(writer, SAFE, "fine")
    assert think.maybe_schedule(flagged_id, flagged_request, policy("flagged"), UNSAFE)
    assert not think.maybe_schedule(safe_id, safe_request, policy("flagged"), SAFE)
    await think.aclose()
    assert writer.close(10)
    assert [c.prompt for c in guard.calls] == ["bad"]
    flagged = store.get(flagged_id)
    assert flagged is not None
    assert flagged.think == "<think>the prompt is unsafe</think>"
    assert (flagged.think_verdict, flagged.disagreement) == ("unsafe", False)
    untouched = store.get(safe_id)
    assert untouched is not None and untouched.think is None
    sample = metrics.registry.get_sample_value
    assert sample("guardline_think_checks_total", {"policy": "test", "result": "agree"}) == 1
    assert sample("guardline_guard_seconds_count", {"guard": "test", "stage": "think"}) == 1


async def test_all_records_disagreements(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=100)
    metrics = GatewayMetrics()
    think = ThinkScheduler(FakeThinkGuard(label="unsafe"), writer, metrics)
    record_id, request = _submit(writer, SAFE)
    assert think.maybe_schedule(record_id, request, policy("all"), SAFE)
    await think.aclose()
    assert writer.close(10)
    got = store.get(record_id)
    assert got is not None and (got.verdict, got.think_verdict, got.disagreement) == (
        "safe",
        "unsafe",
        True,
    )
    assert store.query(disagreement=True)[0].id == record_id
    assert (
        metrics.registry.get_sample_value("guardline_think_disagreements_total", {"policy": "test"})
        == 1
    )


async def test_off_never_rechecks(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=10)
    guard = FakeThinkGuard()
    think = ThinkScheduler(guard, writer)
    for verdict in (SAFE, UNSAFE):
        assert not think.maybe_schedule("id", GuardRequest(prompt="p"), policy("off"), verdict)
    await think.aclose()
    writer.close(10)
    assert guard.calls == []


async def test_sampled_follows_the_rate(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=10)
    guard = FakeThinkGuard()
    think = ThinkScheduler(guard, writer, rng=random.Random(7), max_pending=10_000)
    sampled = policy("sampled", 0.25)
    guard.release.clear()  # keep them pending: only the decision is under test
    chosen = sum(
        think.maybe_schedule(str(i), GuardRequest(prompt="p"), sampled, SAFE) for i in range(2000)
    )
    replay = random.Random(7)
    expected = sum(replay.random() < 0.25 for _ in range(2000))
    assert chosen == expected and 400 < chosen < 600
    assert not any(
        think.maybe_schedule("x", GuardRequest(prompt="p"), policy("sampled", 0.0), UNSAFE)
        for _ in range(100)
    )
    guard.release.set()
    await think.aclose()
    writer.close(10)


async def test_think_mode_and_degraded_decisions_are_not_rechecked(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=10)
    guard = FakeThinkGuard()
    think = ThinkScheduler(guard, writer)
    already = replace(UNSAFE, think="<think>done</think>", mode="think")
    degraded = replace(UNSAFE, degraded=True)
    assert not think.maybe_schedule("a", GuardRequest(prompt="p"), policy("all"), already)
    assert not think.maybe_schedule("b", GuardRequest(prompt="p"), policy("all"), degraded)
    await think.aclose()
    writer.close(10)
    assert guard.calls == []


async def test_concurrency_is_bounded_and_the_caller_never_waits(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=100)
    metrics = GatewayMetrics()
    guard = FakeThinkGuard()
    guard.release.clear()
    think = ThinkScheduler(guard, writer, metrics, max_concurrency=2, max_pending=5)
    results = [
        think.maybe_schedule(str(i), GuardRequest(prompt="p"), policy("all"), SAFE)
        for i in range(8)
    ]  # a plain loop: had any call awaited the guard, this line could not finish
    assert results == [True] * 5 + [False] * 3
    for _ in range(20):
        await asyncio.sleep(0)
    assert guard.running == 2  # two in the guard, three waiting for a slot
    guard.release.set()
    await think.aclose()
    assert guard.max_running == 2 and len(guard.calls) == 5
    assert (
        metrics.registry.get_sample_value(
            "guardline_think_checks_total", {"policy": "test", "result": "dropped"}
        )
        == 3
    )
    writer.close(10)


async def test_guard_errors_are_counted_not_raised(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=10)
    metrics = GatewayMetrics()
    think = ThinkScheduler(FakeThinkGuard(fail=True), writer, metrics)
    record_id, request = _submit(writer, UNSAFE)
    assert think.maybe_schedule(record_id, request, policy("flagged"), UNSAFE)
    await think.aclose()
    writer.close(10)
    got = store.get(record_id)
    assert got is not None and got.think is None
    assert (
        metrics.registry.get_sample_value(
            "guardline_think_checks_total", {"policy": "test", "result": "error"}
        )
        == 1
    )


async def test_aclose_cancels_what_does_not_finish_in_time(store: AuditStore) -> None:
    writer = AuditWriter(store, queue_size=10)
    guard = FakeThinkGuard()
    guard.release.clear()  # never answers
    think = ThinkScheduler(guard, writer)
    assert think.maybe_schedule("a", GuardRequest(prompt="p"), policy("all"), SAFE)
    await asyncio.sleep(0)
    await think.aclose(grace_s=0.01)
    assert think.pending == 0
    assert not think.maybe_schedule("b", GuardRequest(prompt="p"), policy("all"), SAFE)
    writer.close(10)
