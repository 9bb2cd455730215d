"""The audit writer in front of a PostgreSQL that is down: requests never wait, the queue bound
holds (the rest is counted as dropped), the held batch is written once the database is back,
and shutdown during an outage ends instead of hanging."""

from __future__ import annotations

import threading
import time

from proxy.audit.pg_store import PostgresAuditStore
from proxy.audit.writer import AuditWriter
from proxy.observability.metrics import GatewayMetrics
from tests.audit.test_store import record
from tests.postgres_server import PostgresServer, postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures used below

GENEROUS = 60.0  # seconds; only bounds a hang, never measures speed
QUEUE = 20
SENT = 80


def _submit_all(writer: AuditWriter, count: int, prefix: str) -> None:
    def submit() -> None:
        for i in range(count):
            writer.submit(record(request_id=f"{prefix}-{i}"))

    submitter = threading.Thread(target=submit)
    submitter.start()
    submitter.join(GENEROUS)
    assert not submitter.is_alive(), "submit() blocked while the database was down"


def _dropped(metrics: GatewayMetrics) -> float:
    return metrics.registry.get_sample_value("guardline_audit_dropped_total") or 0.0


def test_down_at_start_then_back(postgres_server: PostgresServer, postgres_url: str) -> None:
    postgres_server.stop()
    metrics = GatewayMetrics()
    store = PostgresAuditStore(postgres_url)
    writer = AuditWriter(store, queue_size=QUEUE, metrics=metrics)
    _submit_all(writer, SENT, "down")
    assert writer.dropped > 0  # beyond the bound, counted
    assert _dropped(metrics) == writer.dropped
    deadline = time.monotonic() + GENEROUS
    while not metrics.registry.get_sample_value("guardline_audit_store_retries_total"):
        assert time.monotonic() < deadline, "no retry was counted"
        time.sleep(0.05)

    postgres_server.start()
    assert writer.flush(GENEROUS)
    assert writer.written + writer.dropped == SENT  # nothing lost without being counted
    assert store.count() == writer.written >= QUEUE  # the queue and the held batch
    assert writer.close(GENEROUS)
    store.close()


def test_down_mid_run_keeps_order_and_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = PostgresAuditStore(postgres_url)
    writer = AuditWriter(store, queue_size=1000)
    _submit_all(writer, 10, "before")
    assert writer.flush(GENEROUS)
    postgres_server.stop()
    _submit_all(writer, 10, "during")
    postgres_server.start()
    _submit_all(writer, 10, "after")
    assert writer.flush(GENEROUS)
    assert writer.dropped == 0
    assert store.count() == 30
    assert writer.close(GENEROUS)
    store.close()


def test_close_during_an_outage_ends_and_counts_the_loss(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    metrics = GatewayMetrics()
    store = PostgresAuditStore(postgres_url)
    writer = AuditWriter(store, queue_size=QUEUE, metrics=metrics)
    postgres_server.stop()
    _submit_all(writer, QUEUE, "lost")
    assert writer.close(GENEROUS), "close() hung on a database that is down"
    assert writer.written == 0
    assert writer.dropped == QUEUE == _dropped(metrics)
    store.close()
