"""Everything observability needs, built once from config.yaml in the app's lifespan.

`build_observability(config)` configures the JSON logs (and registers every secret the config
holds), the tracer provider (OTEL_* variables), the metrics registry and the audit writer, each
according to its `enabled` switch, and returns them in one object whose `aclose()` flushes and
stops them in the right order. Switched-off parts are None (the tracer is a no-op tracer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import NoOpTracer, Tracer

from proxy.config_schema import GatewayConfig
from proxy.observability import tracing
from proxy.observability.late_spans import ReservedIds
from proxy.observability.logs import Redactor, configure_logging
from proxy.observability.metrics import GatewayMetrics
from proxy.upstream_errors import configured_secrets

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider

    from proxy.audit.think import ThinkCheck, ThinkScheduler
    from proxy.audit.writer import AuditWriter
    from proxy.background import BackgroundTasks


@dataclass
class Observability:
    tracer: Tracer
    tracer_provider: TracerProvider | None
    metrics: GatewayMetrics | None
    writer: AuditWriter | None
    log_provider: LoggerProvider | None
    redactor: Redactor

    def think_scheduler(
        self,
        check: ThinkCheck,
        max_concurrency: int = 2,
        background: BackgroundTasks | None = None,
    ) -> ThinkScheduler | None:
        """THINK re-checks writing to this audit trail (None when the audit is off); with
        `background`, the re-checks are registered there (drained at shutdown)."""
        if self.writer is None:
            return None
        from proxy.audit.think import ThinkScheduler

        return ThinkScheduler(
            check, self.writer, self.metrics, max_concurrency, background=background
        )

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Drain the audit queue, then flush and stop the exporters (off the event loop)."""
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close, timeout_s)
            await asyncio.to_thread(self.writer.store.close)
        if self.log_provider is not None:
            await asyncio.to_thread(self.log_provider.shutdown)
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)
        if self.metrics is not None:
            from proxy.observability.multiprocess import mark_this_worker_dead

            mark_this_worker_dead()


def config_secrets(config: GatewayConfig) -> Iterator[str]:
    """Every secret value in the config: tenant keys (not their sha256: digests), upstream and
    guard API keys, the admin key."""
    yield from configured_secrets(config)


def build_observability(
    config: GatewayConfig,
    *,
    log_stream: TextIO | None = None,
    service_name: str = "guardline",
    span_processor: SpanProcessor | None = None,
) -> Observability:
    """Configure logging, tracing, metrics and audit from `config` and the OTEL_* variables.

    `span_processor` is added beside the configured exporters (tests: an in-memory one)."""
    # httpx logs every guard call at INFO: the gateway's own line per request says it all.
    redactor = configure_logging(
        config.logging.level, stream=log_stream, quiet_libraries=config.logging.level != "debug"
    )
    redactor.register([*config_secrets(config), *tracing.exporter_secrets()])

    provider: TracerProvider | None = None
    tracer: Tracer = NoOpTracer()
    if config.tracing.enabled:
        provider = tracing.setup_tracing(
            service_name=service_name,
            span_processor=span_processor,
            # tracing.late_spans (opt-in): spans recorded after the response keep the ids
            # their traceparent announced (proxy.observability.late_spans).
            id_generator=ReservedIds() if config.tracing.late_spans else None,
        )
        tracer = tracing.tracer(provider)

    metrics = GatewayMetrics() if config.metrics.enabled else None

    writer: AuditWriter | None = None
    log_provider: LoggerProvider | None = None
    if config.audit.enabled:
        from proxy.audit.storage import open_audit_store
        from proxy.audit.writer import AuditWriter

        otel_logger = None
        if config.audit.otel_logs:
            from proxy.audit.otel_logs import audit_logger, setup_audit_logs

            log_provider = setup_audit_logs(service_name=service_name)
            otel_logger = audit_logger(log_provider)
        # audit.url (PostgreSQL, shared by replicas) when set, else the audit.path SQLite file.
        store = open_audit_store(config.audit.url or config.audit.path, readonly=False)
        writer = AuditWriter(store, config.audit.queue_size, metrics, otel_logger)
    return Observability(tracer, provider, metrics, writer, log_provider, redactor)
