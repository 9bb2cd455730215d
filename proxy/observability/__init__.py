"""Observability building blocks: tracing (OpenTelemetry), metrics (Prometheus), the per-request
timing ledger behind Server-Timing and the overhead metric, and redacted JSON logs.

Import the submodules directly (`proxy.observability.tracing`, `.metrics`, `.timing`, `.logs`);
each is independent, and none installs global providers or registries on import.
"""
