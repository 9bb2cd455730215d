"""The bounded background audit writer: `submit()` costs a queue put and never blocks.

One daemon thread takes everything queued, writes it in one transaction per batch (SQLite or
PostgreSQL, `proxy/audit/storage.py`), and (optionally) emits each record as an OpenTelemetry
log record. When the queue is full, the record is dropped and counted
(`guardline_audit_dropped_total`): losing an audit line under overload is better than slowing
every request. THINK updates travel through the same queue, so they are applied after the insert
of the record they update.

A store that is unreachable (`AuditStoreUnavailable`: PostgreSQL down or restarting) keeps the
batch: the thread waits and tries again with a growing delay, while the queue absorbs new
records up to its bound and counts the rest as dropped. Nothing on the request path waits for
it. At shutdown a store that is still down gets one last try; what cannot be written is counted
as dropped, so `close()` never hangs on a dead database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from proxy.audit.record import AuditRecord
from proxy.audit.storage import AuditStorage, AuditStoreUnavailable

if TYPE_CHECKING:
    from opentelemetry._logs import Logger as OtelLogger

    from proxy.observability.metrics import GatewayMetrics

_log = logging.getLogger("guardline.audit")

DEFAULT_BATCH_SIZE: Final = 512
# After waking up for a record, wait this long for more before writing. Fewer, larger
# transactions, and far fewer GIL hand-offs between this thread and the event loop's thread
# (each wake-up can stall the request path for a moment). Audit latency does not matter.
DEFAULT_LINGER_S: Final = 0.05
# Retry delays while the store is unreachable: from RETRY_MIN_S, doubling, at most RETRY_MAX_S.
RETRY_MIN_S: Final = 0.1
RETRY_MAX_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class _ThinkUpdate:
    record_id: str
    think: str | None
    think_verdict: str
    disagreement: bool


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event


class _Stop:
    pass


_STOP: Final = _Stop()
_Item = AuditRecord | _ThinkUpdate | _Flush | _Stop


def emit_otel_log(logger: OtelLogger, record: AuditRecord) -> None:
    """The record as an OpenTelemetry log record (event `guardline.audit`).

    The logs API is still `_logs` (unstable) in opentelemetry-python: this is the one place
    that touches it.
    """
    from opentelemetry._logs import SeverityNumber

    attributes: dict[str, Any] = {}
    for key, value in record.to_json_dict().items():
        if value is None or key == "time":
            continue
        attributes[f"guardline.audit.{key}"] = value
    logger.emit(
        timestamp=int(record.time * 1e9),
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        body=f"{record.stage} {record.verdict} {record.policy}",
        attributes=attributes,
        event_name="guardline.audit",
    )


class AuditWriter:
    """Queue + one thread in front of an audit store. Start on construction; `close()` drains."""

    def __init__(
        self,
        store: AuditStorage,
        queue_size: int = 10000,
        metrics: GatewayMetrics | None = None,
        otel_logger: OtelLogger | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        self.store = store
        self.linger_s = linger_s
        self.metrics = metrics
        self.otel_logger = otel_logger
        self.batch_size = batch_size
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._closed = False
        # Set by close(): a retry wait ends at once, and an unreachable store is given up.
        self._stopping = threading.Event()
        self._abandoned = False  # the store was unreachable at shutdown: drop the rest
        self._outage = False  # the store is unreachable (logged once per outage)
        # `dropped` is incremented by any submitting thread (`+=` is not atomic: a lock);
        # `written` only by the writer thread.
        self._dropped_lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="guardline-audit", daemon=True)
        self._thread.start()

    # --- request path -------------------------------------------------------------------------

    def submit(self, record: AuditRecord) -> None:
        """Queue a record for writing; drops (and counts) it when the queue is full or closed."""
        self._put(record)

    def attach_think(
        self, record_id: str, think: str | None, think_verdict: str, disagreement: bool
    ) -> None:
        """Queue a THINK update of a submitted record (same drop rule as `submit`)."""
        self._put(_ThinkUpdate(record_id, think, think_verdict, disagreement))

    def _put(self, item: _Item) -> None:
        if not self._closed:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                pass
        self._count_dropped(1)

    def _count_dropped(self, count: int) -> None:
        with self._dropped_lock:
            self.dropped += count
        if self.metrics is not None:
            self.metrics.audit_records_dropped(count)

    # --- control ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written. False on timeout."""
        marker = _Flush(threading.Event())
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting records, write what is queued, stop the thread. False on timeout."""
        if not self._closed:
            self._closed = True
            self._stopping.set()
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        backlog = False  # the last batch was full: more is waiting, do not linger
        while True:
            first = self._queue.get()
            if not backlog and self.linger_s > 0 and isinstance(first, AuditRecord | _ThinkUpdate):
                time.sleep(self.linger_s)  # let a batch gather (sleep releases the GIL)
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            backlog = len(batch) >= self.batch_size
            if not self._process(batch):
                return

    def _process(self, batch: list[_Item]) -> bool:
        """Apply a batch in order. False once the stop marker is reached."""
        records: list[AuditRecord] = []
        for item in batch:
            if isinstance(item, AuditRecord):
                records.append(item)
                continue
            self._write(records)
            records = []
            if isinstance(item, _ThinkUpdate):
                self._update(item)
            elif isinstance(item, _Flush):
                item.done.set()
            else:
                return False
        self._write(records)
        return True

    def _write(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        stored = self._retrying(
            lambda: self.store.insert_many(records), f"{len(records)} records", len(records)
        )
        if not stored:
            return
        self.written += len(records)
        if self.metrics is not None:
            self.metrics.audit_records_written(len(records))
        if self.otel_logger is not None:
            for record in records:
                try:
                    emit_otel_log(self.otel_logger, record)
                except Exception:
                    _log.exception("audit record not emitted as an OpenTelemetry log record")
                    break

    def _update(self, update: _ThinkUpdate) -> None:
        self._retrying(
            lambda: self.store.attach_think(
                update.record_id, update.think, update.think_verdict, update.disagreement
            ),
            f"THINK update of record {update.record_id}",
            0,
        )

    def _retrying(self, action: Callable[[], object], what: str, records: int) -> bool:
        """Run `action` until it succeeds, retrying while the store is unreachable. False when
        it was given up (an error that retrying cannot fix, or shutdown during an outage); the
        `records` it carried are then counted as dropped."""
        delay = RETRY_MIN_S
        while not self._abandoned:
            try:
                action()
            except AuditStoreUnavailable as exc:
                if not self._outage:
                    self._outage = True
                    _log.warning("audit store unreachable, retrying: %s", exc)
                if self.metrics is not None:
                    self.metrics.audit_store_retried()
                if self._stopping.is_set():
                    # Shutting down and still down: waiting longer would hold up the exit.
                    _log.error("audit store unreachable at shutdown; unwritten records dropped")
                    self._abandoned = True
                    break
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception:
                # The request path must not care; the loss is counted and logged once per batch.
                _log.exception("audit write failed (%s dropped)", what)
                break
            if self._outage:
                self._outage = False
                _log.warning("audit store reachable again")
            return True
        if records:
            self._count_dropped(records)
        return False
