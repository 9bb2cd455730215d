"""Observability building blocks: tracing (the OpenTelemetry SDK, configured from OTEL_*),
metrics (Prometheus), redacted JSON logs, the ASGI middlewares (SERVER span and request
metrics; the request log line), and the observers of the moderation pipeline (its spans and
its report).

Import the submodules directly (`.tracing`, `.otel_env`, `.metrics`, `.logs`, `.asgi`,
`.request_log`, `.moderation_spans`, `.moderation_report`); none installs global providers
or registries on import.
"""
