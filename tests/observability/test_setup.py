"""build_observability: one call from config.yaml to logs, tracing, metrics and audit."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry.trace import NoOpTracer

from guard_engine.policy.compiled import AuditSettings, CompiledPolicy
from guard_engine.types import GuardRequest, Verdict
from proxy.audit.record import AuditRecord
from proxy.audit.store import AuditStore
from proxy.config_schema import (
    AuditConfig,
    AuthConfig,
    GatewayConfig,
    MetricsConfig,
    OpenAIUpstreamConfig,
    RouteConfig,
    SGLangGuardConfig,
    TenantConfig,
    TracingConfig,
)
from proxy.observability.setup import build_observability, config_secrets
from tests.factories import OtelEnv, make_policy, make_verdict

TENANT_KEY = "tenant-key-acme-31d0a9"
UPSTREAM_KEY = "sk-upstream-9f8e7d6c5b4a"
GUARD_KEY = "guard-key-77aa88bb"


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def config(tmp_path: Path, *, enabled: bool = True) -> GatewayConfig:
    return GatewayConfig(
        auth=AuthConfig(tenants={"acme": TenantConfig(keys=[TENANT_KEY, "sha256:" + "0" * 64])}),
        guards={
            "nemotron": SGLangGuardConfig(
                type="sglang", base_url="http://127.0.0.1:1", api_key=GUARD_KEY
            )
        },
        default_guard="nemotron",
        upstreams={"openai": OpenAIUpstreamConfig(type="openai", api_key=UPSTREAM_KEY)},
        routes=[RouteConfig(name="default", upstream="openai", policy="/p.yaml")],
        tracing=TracingConfig(enabled=enabled),
        metrics=MetricsConfig(enabled=enabled),
        audit=AuditConfig(enabled=enabled, path=str(tmp_path / "audit.sqlite3"), otel_logs=True),
    )


def test_config_secrets(tmp_path: Path) -> None:
    assert sorted(config_secrets(config(tmp_path))) == sorted([TENANT_KEY, UPSTREAM_KEY, GUARD_KEY])


async def test_everything_on(tmp_path: Path, otel_env: OtelEnv) -> None:
    out = io.StringIO()
    otel_env({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=collector-secret-1"})
    obs = build_observability(config(tmp_path), log_stream=out)
    structlog.get_logger().info("keys", all=[TENANT_KEY, UPSTREAM_KEY, GUARD_KEY],
                                otlp="collector-secret-1")  # fmt: skip
    with obs.tracer.start_as_current_span("r") as span:
        assert span.is_recording()
    assert obs.metrics is not None and obs.writer is not None and obs.log_provider is not None

    async def think(request: GuardRequest, policy: CompiledPolicy) -> Verdict:
        return make_verdict(prompt_label="unsafe", think="<think>x</think>", mode="think")

    scheduler = obs.think_scheduler(think)
    assert scheduler is not None
    verdict = make_verdict(prompt_label="unsafe")
    request = GuardRequest(prompt="p")
    record = AuditRecord.from_verdict(verdict, request, request_id="r", route="default")
    obs.writer.submit(record)
    policy = make_policy(audit=AuditSettings(think="all"))
    assert scheduler.maybe_schedule(record.id, request, policy, verdict)
    await scheduler.aclose()
    await obs.aclose()

    text = out.getvalue()
    for secret in (TENANT_KEY, UPSTREAM_KEY, GUARD_KEY, "collector-secret-1"):
        assert secret not in text
    assert json.loads(text.splitlines()[0])["event"] == "keys"
    with AuditStore(tmp_path / "audit.sqlite3", readonly=True) as store:
        stored = store.get(record.id)
    assert stored is not None and stored.think == "<think>x</think>"
    assert obs.metrics.registry.get_sample_value("guardline_audit_written_total") == 1


async def test_everything_off(tmp_path: Path) -> None:
    obs = build_observability(config(tmp_path, enabled=False), log_stream=io.StringIO())
    assert isinstance(obs.tracer, NoOpTracer) and obs.tracer_provider is None
    assert obs.metrics is None and obs.writer is None and obs.log_provider is None
    assert obs.think_scheduler(lambda r, p: None) is None  # type: ignore[arg-type,return-value]
    await obs.aclose()
    assert not (tmp_path / "audit.sqlite3").exists()
