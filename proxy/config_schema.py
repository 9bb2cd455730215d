"""The strict raw shape of config.yaml (docs/config.md). Unknown keys are errors.

`proxy.config` loads a file into these models (interpolating `${VAR}`) and validates the
cross-references (routes name upstreams and policies, default_guard names a guard).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    # Exactly one of the two: one server (or a router in front of several), or replicas the
    # gateway balances itself (guard_engine/backends/balanced.py; docs/guard-models.md).
    base_url: str | None = None
    base_urls: list[str] | None = Field(default=None, min_length=1)
    model: str = "nvidia/Nemotron-3.5-Content-Safety"
    format: Literal["nemotron-3.5", "llama-guard-3"] = "nemotron-3.5"
    api_key: str | None = None
    timeout_ms: int = Field(default=3000, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    breaker: BreakerConfig = BreakerConfig()
    # Conversation characters per guard call; longer texts are judged in overlapping windows
    # (guard_engine/windows.py). 8000 fits the shipped 4096-token launch for English text.
    max_chars: int = Field(default=8000, ge=200)

    @model_validator(mode="after")
    def _one_address(self) -> SGLangGuardConfig:
        if (self.base_url is None) == (self.base_urls is None):
            raise ValueError("set exactly one of base_url and base_urls")
        return self

    @property
    def urls(self) -> list[str]:
        """Every endpoint of this guard (one for `base_url`)."""
        return [self.base_url] if self.base_url is not None else list(self.base_urls or ())


class EmbeddedGuardConfig(Strict):
    type: Literal["embedded"]
    threads: int = Field(default=1, ge=1)
    # Shed load by wait, not queue length: a check that would wait longer for the CPU fails
    # at once (the policy's on_guard_error decides: 503 with Retry-After under `closed`).
    max_queue_wait_ms: float = Field(default=2000.0, gt=0)


class DriftConfig(Strict):
    # Locally answered checks re-checked by the model guard before the disagreement counts.
    min_rechecks: int = Field(default=50, ge=1)
    window: int = Field(default=500, ge=1)  # the disagreement is over the last N re-checks
    # Above this share of disagreements local answers stop until a reload or a restart.
    max_disagreement: float = Field(default=0.03, ge=0, le=1)

    @model_validator(mode="after")
    def _min_within_window(self) -> DriftConfig:
        if self.min_rechecks > self.window:
            raise ValueError("min_rechecks must not exceed window")
        return self


class CascadeGuardConfig(Strict):
    """A distilled head answers the confident checks, a model guard the rest (docs/config.md)."""

    type: Literal["cascade"]
    head: str  # a `guardline distill` head file, relative to the config file
    guard: str  # the model guard (a `type: sglang` guard of this config) answering the rest
    # Share of locally answered checks the model guard re-checks in the background.
    recheck_sample: float = Field(default=0.02, ge=0, le=1)
    drift: DriftConfig = DriftConfig()
    threads: int = Field(default=1, ge=1)  # the local scorer's CPU threads
    # A check the local scorer could not start within this goes to the model guard instead.
    max_queue_wait_ms: float = Field(default=200.0, gt=0)


GuardConfig = Annotated[
    SGLangGuardConfig | EmbeddedGuardConfig | CascadeGuardConfig, Field(discriminator="type")
]


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
    # Set: records go to this PostgreSQL database (one trail for every replica) instead of
    # the `path` SQLite file; setting both is an error (proxy/config.py).
    url: str = ""
    queue_size: int = Field(default=10000, ge=1)
    otel_logs: bool = False  # also emit records as OpenTelemetry log records

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, url: str) -> str:
        from proxy.audit.url import url_problem

        problem = url_problem(url) if url else None
        if problem is not None:
            raise ValueError(problem)
        return url


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


class CacheConfig(Strict):
    # The verdict cache (guard_engine.cache): an LRU in each process; 0 entries: off.
    entries: int = Field(default=10000, ge=0)
    ttl_s: float = Field(default=300.0, gt=0)
    # Set: a Redis tier behind the LRU, shared by every replica (guard_engine.shared_cache).
    # Empty: in-process only.
    redis_url: str = ""
    # Per Redis call; a slower or unreachable Redis is a cache miss, never a failed request.
    redis_timeout_ms: float = Field(default=50.0, gt=0)
    key_prefix: str = "guardline:verdicts"


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
    cache: CacheConfig = CacheConfig()
