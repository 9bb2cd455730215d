"""The background audit writer: batches, never blocks, drops and counts when its queue is full."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from proxy.audit.record import AuditRecord
from proxy.audit.store import AuditStore
from proxy.audit.writer import AuditWriter
from proxy.observability.metrics import GatewayMetrics
from tests.audit.test_store import record

GENEROUS = 30.0  # seconds; only bounds a hang, never measures speed


class GatedStore(AuditStore):
    """A real store whose writes wait for the test to open a gate (a slow disk, on demand)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def insert_many(self, records: Sequence[AuditRecord]) -> None:
        self.entered.set()
        self.gate.wait(GENEROUS)
        self.batches.append(len(records))
        super().insert_many(records)


def _metric(metrics: GatewayMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def test_burst_larger_than_the_queue(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "a.sqlite3")
    metrics = GatewayMetrics()
    writer = AuditWriter(store, queue_size=100, metrics=metrics)
    first = record(request_id="first")
    writer.submit(first)
    assert store.entered.wait(GENEROUS)  # the thread holds `first` and is stuck on the disk

    burst = [record(request_id=f"burst-{i}") for i in range(250)]

    def submit_burst() -> None:
        for r in burst:
            writer.submit(r)

    submitter = threading.Thread(target=submit_burst)
    submitter.start()
    submitter.join(GENEROUS)
    assert not submitter.is_alive(), "submit() blocked while the writer was stuck"
    assert writer.dropped == 150
    assert writer.pending == 100

    store.gate.set()
    assert writer.flush(GENEROUS)
    assert writer.written == 101
    assert store.count() == 101
    kept = {r.request_id for r in store.query(limit=None)}
    assert kept == {"first"} | {f"burst-{i}" for i in range(100)}  # the first 100 of the burst
    assert max(store.batches) > 1  # queued records were written in batches
    assert _metric(metrics, "guardline_audit_dropped_total") == 150
    assert _metric(metrics, "guardline_audit_written_total") == 101
    assert writer.close(GENEROUS)


def test_close_drains_and_later_submits_are_dropped(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "b.sqlite3")
    writer = AuditWriter(store, queue_size=1000)
    for i in range(500):
        writer.submit(record(request_id=str(i)))
    assert writer.close(GENEROUS)
    assert store.count() == 500
    writer.submit(record())
    assert writer.dropped == 1
    assert writer.close(GENEROUS)  # idempotent


def test_think_update_is_applied_after_its_insert(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "c.sqlite3")
    writer = AuditWriter(store, queue_size=10)
    r = record()
    writer.submit(r)
    writer.attach_think(r.id, "because ...", "safe", True)
    assert writer.flush(GENEROUS)
    got = store.get(r.id)
    assert got is not None and (got.think, got.think_verdict, got.disagreement) == (
        "because ...",
        "safe",
        True,
    )
    writer.close(GENEROUS)


def test_a_failing_store_counts_drops_and_the_thread_survives(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "d.sqlite3")
    metrics = GatewayMetrics()
    writer = AuditWriter(store, queue_size=10, metrics=metrics)
    store.close()  # every write now raises sqlite3.ProgrammingError
    writer.submit(record())
    writer.submit(record())
    assert writer.flush(GENEROUS)
    assert writer.dropped == 2 and writer.written == 0
    assert _metric(metrics, "guardline_audit_dropped_total") == 2
    assert writer.close(GENEROUS)


def test_records_also_go_out_as_opentelemetry_log_records(tmp_path: Path) -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    store = AuditStore(tmp_path / "e.sqlite3")
    writer = AuditWriter(store, queue_size=10, otel_logger=provider.get_logger("guardline.audit"))
    r = record(categories=("Violence", "Threat"))
    writer.submit(r)
    assert writer.close(GENEROUS)
    provider.shutdown()
    (log,) = exporter.get_finished_logs()
    attributes = dict(log.log_record.attributes or {})
    assert attributes["guardline.audit.id"] == r.id
    assert attributes["guardline.audit.policy"] == "kids-education@1a2b3c4d"
    assert tuple(attributes["guardline.audit.categories"]) == ("Violence", "Threat")  # type: ignore[arg-type]
    assert "guardline.audit.content" not in attributes  # None fields are left out
    assert log.log_record.event_name == "guardline.audit"
    assert log.log_record.timestamp == int(r.time * 1e9)
