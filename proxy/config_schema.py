"""The strict raw shape of config.yaml (docs/config.md). Unknown keys are errors.

`proxy.config` loads a file into these models (interpolating `${VAR}`) and validates the
cross-references (routes name upstreams and policies, default_guard names a guard).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.client_headers import check_forward_header
from proxy.endpoints import EndpointRule, pattern_error


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    # Seconds in-flight requests get to finish on SIGTERM.
    graceful_shutdown_s: float = Field(default=30.0, ge=0)
    # Empty: /metrics and /readyz's details are open (bind to 127.0.0.1). Set: they need
    # `Authorization: Bearer <admin_key>`; plain /readyz keeps its status code for probes.
    admin_key: str = ""


class TenantConfig(Strict):
    # Plain keys or `sha256:<hex>` digests of keys. Empty strings are ignored so that an
    # unset `${VAR:-}` does not create a key that matches an empty bearer token.
    keys: list[str] = Field(min_length=1)


class AuthConfig(Strict):
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)


class BreakerConfig(Strict):
    failures: int = Field(default=5, ge=1)  # consecutive failures that open the circuit
    reset_s: float = Field(default=10.0, gt=0)  # time before a half-open probe


class SGLangGuardConfig(Strict):
    type: Literal["sglang"]
    base_url: str
    model: str = "nvidia/Nemotron-3.5-Content-Safety"
    format: Literal["nemotron-3.5", "llama-guard-3"] = "nemotron-3.5"
    api_key: str | None = None
    timeout_ms: int = Field(default=3000, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    breaker: BreakerConfig = BreakerConfig()
    # Conversation characters per guard call; longer texts are judged in overlapping windows
    # (guard_engine/windows.py). 8000 fits the shipped 4096-token launch for English text.
    max_chars: int = Field(default=8000, ge=200)


class EmbeddedGuardConfig(Strict):
    type: Literal["embedded"]
    threads: int = Field(default=1, ge=1)
    # Shed load by wait, not queue length: a check that would wait longer for the CPU fails
    # at once (the policy's on_guard_error decides: 503 with Retry-After under `closed`).
    max_queue_wait_ms: float = Field(default=2000.0, gt=0)


GuardConfig = Annotated[SGLangGuardConfig | EmbeddedGuardConfig, Field(discriminator="type")]


class OpenAIUpstreamConfig(Strict):
    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    # Empty: the client's own Authorization header is forwarded (bring-your-own-key).
    api_key: str = ""
    # Models this upstream offers (for /v1/models and model matching); empty: any.
    models: list[str] = Field(default_factory=list)
    # Client-facing model name -> the upstream's model name.
    model_alias: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=512, ge=1)


class LiteLLMUpstreamConfig(Strict):
    type: Literal["litellm"]
    model: str  # litellm's provider/model id, e.g. anthropic/claude-sonnet-4-5
    api_key: str = ""
    api_base: str | None = None
    # Client-facing model names served by this upstream; empty: the `model` id itself.
    models: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=600.0, gt=0)


UpstreamConfig = Annotated[
    OpenAIUpstreamConfig | LiteLLMUpstreamConfig, Field(discriminator="type")
]


class RouteConfig(Strict):
    name: str
    path_prefix: str = ""
    tenants: list[str] | None = None  # None: any tenant (or none)
    models: list[str] | None = None  # None: any model; entries may end in `*`
    upstream: str
    policy: str  # path, relative to the config file
    # Client headers forwarded to an upstream called with the operator's api_key beyond the
    # default allow-list (proxy.client_headers); entries ending in `*` are prefixes.
    forward_headers: list[str] = Field(default_factory=list)

    @field_validator("forward_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        return [check_forward_header(entry) for entry in value]
    # Other /v1/ endpoints: path pattern -> check | pass | deny (proxy.endpoints); None: defaults.
    endpoints: dict[str, EndpointRule] | None = None

    @field_validator("endpoints")
    @classmethod
    def _endpoint_patterns(
        cls, value: dict[str, EndpointRule] | None
    ) -> dict[str, EndpointRule] | None:
        for pattern, rule in (value or {}).items():
            error = pattern_error(pattern, rule)
            if error is not None:
                raise ValueError(error)
        return value


class TracingConfig(Strict):
    # Exporters are chosen with the standard OTEL_* variables; this only switches tracing.
    enabled: bool = True
    record_content: bool = False  # prompt/response text in spans
    # Opt-in: spans recorded after the response (proxy.observability.late_spans), cheaper on
    # the request path but relying on OpenTelemetry SDK internals (docs/benchmarks.md).
    late_spans: bool = False


class MetricsConfig(Strict):
    enabled: bool = True


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = True  # one JSON line per request
    content: bool = False  # prompt/response text in logs


class AuditConfig(Strict):
    enabled: bool = True
    path: str = "guardline-audit.sqlite3"  # relative to the config file
    queue_size: int = Field(default=10000, ge=1)
    otel_logs: bool = False  # also emit records as OpenTelemetry log records


class ModerationsConfig(Strict):
    # Entries of one /v1/moderations `input` array; more is a 400 (each is a guard call).
    max_inputs: int = Field(default=32, ge=1, le=1024)


class LimitSpec(Strict):
    # Per tenant, per minute (a sliding 60 s window). Unset: the `default` value; 0: no limit.
    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)  # from the upstream's `usage`
    concurrent_requests: int | None = Field(default=None, ge=0)
    # Guard calls made for the tenant's requests (verdict-cache hits are free); tenants only.
    guard_checks_per_minute: int | None = Field(default=None, ge=0)


class LimitsConfig(Strict):
    # Empty: counters in process (per gateway process). Set: shared by every replica.
    redis_url: str = ""
    # Redis unreachable: `open` serves unlimited (marked x-guardline-limits: degraded);
    # `closed` answers 503 with Retry-After.
    on_redis_error: Literal["open", "closed"] = "open"
    redis_timeout_ms: float = Field(default=250.0, gt=0)
    key_prefix: str = "guardline:limits"
    # A request that never reports its end (a crashed replica) stops counting as in flight
    # after this long.
    concurrency_lease_s: float = Field(default=900.0, gt=0)
    default: LimitSpec = LimitSpec()
    tenants: dict[str, LimitSpec] = Field(default_factory=dict)
    # Route name -> limits of each tenant on that route (own counters, checked in addition).
    routes: dict[str, LimitSpec] = Field(default_factory=dict)


def _default_guards() -> dict[str, GuardConfig]:
    return {"local": EmbeddedGuardConfig(type="embedded")}


class GatewayConfig(Strict):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    default_guard: str = "local"
    guards: dict[str, GuardConfig] = Field(default_factory=_default_guards)
    upstreams: dict[str, UpstreamConfig]
    routes: list[RouteConfig] = Field(min_length=1)
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    audit: AuditConfig = AuditConfig()
    moderations: ModerationsConfig = ModerationsConfig()
    limits: LimitsConfig = LimitsConfig()
