"""Audit records as OpenTelemetry log records (`audit.otel_logs: true`): a LoggerProvider
configured from the standard OTEL_* variables of the logs signal (the SDK reads most of them
itself: see proxy.observability.otel_env).

OTEL_LOGS_EXPORTER (otlp | console | none; unset: otlp when an OTLP endpoint is set),
OTEL_EXPORTER_OTLP(_LOGS)_ENDPOINT / _PROTOCOL / _HEADERS / _TIMEOUT / _COMPRESSION,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED. Export runs in a
BatchLogRecordProcessor thread; the audit writer thread only hands records over.

The logs SDK is still `_logs` (unstable) in opentelemetry-python; this module and
`writer.emit_otel_log` are the only places that touch it.
"""

from __future__ import annotations

import sys
from typing import IO, Final

from opentelemetry._logs import Logger
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
)

from proxy.observability import otel_env

AUDIT_LOGGER_NAME: Final = "guardline.audit"


def setup_audit_logs(
    *,
    service_name: str = "guardline",
    processor: LogRecordProcessor | None = None,
    console_stream: IO[str] | None = None,
) -> LoggerProvider:
    """A LoggerProvider for audit records (`processor` is added beside the configured
    exporters; tests pass an in-memory one). Raises OtelConfigError for unsupported settings."""
    provider = LoggerProvider(resource=otel_env.resource(service_name))
    if not otel_env.sdk_disabled():
        for name in otel_env.exporter_names("logs"):
            exporter = (
                _otlp_exporter()
                if name == "otlp"
                else ConsoleLogRecordExporter(out=console_stream or sys.stdout)
            )
            provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    if processor is not None:
        provider.add_log_record_processor(processor)
    return provider


def audit_logger(provider: LoggerProvider) -> Logger:
    """The logger to give `AuditWriter(otel_logger=...)`."""
    return provider.get_logger(AUDIT_LOGGER_NAME)


def _otlp_exporter() -> LogRecordExporter:
    """The OTLP exporter of the configured protocol; it reads its endpoint, headers, timeout
    and compression from the OTEL_EXPORTER_OTLP_* variables itself."""
    if otel_env.otlp_protocol("logs") == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPLogExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise otel_env.grpc_missing(exc) from exc
        exporter: LogRecordExporter = GrpcExporter()
        return exporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter()
