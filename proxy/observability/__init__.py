"""Observability building blocks: tracing (OpenTelemetry), metrics (Prometheus), the per-request
timing ledger behind Server-Timing and the overhead metric, redacted JSON logs, and the ASGI
middleware that opens the SERVER span.

Import the submodules directly (`.tracing`, `.metrics`, `.timing`, `.logs`, `.asgi`; `.otlp`
reads the OTEL_* variables); none installs global providers or registries on import.
"""
