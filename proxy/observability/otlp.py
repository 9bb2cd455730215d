"""The standard OTEL_* environment variables, read from a mapping (not only os.environ) and
checked at startup, for the two signals guardline exports: traces and (audit) logs.

Per-signal variables win over the general ones (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT over
OTEL_EXPORTER_OTLP_ENDPOINT), as the specification says. Anything unsupported is an
`OtelConfigError` naming the variable, raised before the server accepts traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as _SDK_VERSION

Signal = Literal["traces", "logs"]

DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
DEFAULT_TIMEOUT_S: Final = 10.0
GRPC_PACKAGE: Final = "opentelemetry-exporter-otlp-proto-grpc"


class OtelConfigError(ValueError):
    """An OTEL_* variable asks for something this installation cannot do (named in the message)."""


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    protocol: Literal["http/protobuf", "grpc"]
    endpoint: str  # for HTTP: the full signal URL (…/v1/traces)
    headers: dict[str, str]
    timeout_s: float
    compression: Literal["none", "gzip", "deflate"]


def parse_pairs(raw: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded values (OTEL_RESOURCE_ATTRIBUTES, *_HEADERS)."""
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def resource(service_name: str, env: Mapping[str, str]) -> Resource:
    """service.name: OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES's, else `service_name`."""
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _SDK_VERSION,
        "service.name": service_name,
    }
    attributes.update(parse_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if env.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    return Resource(attributes)


def sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def signal_value(env: Mapping[str, str], signal: Signal, name: str) -> str:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_<name>, else OTEL_EXPORTER_OTLP_<name>, else ''."""
    return (
        env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", "").strip()
        or env.get(f"OTEL_EXPORTER_OTLP_{name}", "").strip()
    )


def exporter_names(env: Mapping[str, str], signal: Signal) -> list[str]:
    """OTEL_<SIGNAL>_EXPORTER as a list; unset means `otlp` if an endpoint is set, else none.

    (The SDK's own default is OTLP to localhost: a gateway should not spam connection errors
    at a collector nobody configured.)
    """
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    raw = env.get(variable, "").strip().lower()
    if not raw:
        return ["otlp"] if signal_value(env, signal, "ENDPOINT") else []
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if "none" in names:
        return []
    for name in names:
        if name not in ("otlp", "console"):
            raise OtelConfigError(f"{variable}={name!r} is not supported (otlp, console or none)")
    return names


def otlp_settings(env: Mapping[str, str], signal: Signal) -> OtlpSettings:
    protocol = signal_value(env, signal, "PROTOCOL") or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise OtelConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported (http/protobuf or grpc)"
        )
    compression = signal_value(env, signal, "COMPRESSION").lower() or "none"
    if compression not in ("none", "gzip", "deflate"):
        raise OtelConfigError(
            f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r} is not supported "
            "(gzip, deflate or none)"
        )
    raw_timeout = signal_value(env, signal, "TIMEOUT")
    try:
        # The specification's unit is milliseconds.
        timeout_s = float(raw_timeout) / 1000.0 if raw_timeout else DEFAULT_TIMEOUT_S
    except ValueError as exc:
        raise OtelConfigError(
            f"OTEL_EXPORTER_OTLP_TIMEOUT={raw_timeout!r} is not a number"
        ) from exc
    if protocol == "grpc":
        endpoint = signal_value(env, signal, "ENDPOINT") or DEFAULT_GRPC_ENDPOINT
    else:
        endpoint = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
        if not endpoint:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_HTTP_ENDPOINT
            endpoint = f"{base.rstrip('/')}/v1/{signal}"
    return OtlpSettings(
        protocol=protocol,  # type: ignore[arg-type]
        endpoint=endpoint,
        headers=parse_pairs(signal_value(env, signal, "HEADERS")),
        timeout_s=timeout_s,
        compression=compression,  # type: ignore[arg-type]
    )


def grpc_missing(exc: ImportError) -> OtelConfigError:
    error = OtelConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the {GRPC_PACKAGE} package "
        f"(pip install {GRPC_PACKAGE}), or use http/protobuf"
    )
    error.__cause__ = exc
    return error


def header_values(env: Mapping[str, str]) -> list[str]:
    """Every OTLP header value (collector API keys), for log redaction."""
    values: list[str] = []
    for variable in (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    ):
        values.extend(parse_pairs(env.get(variable, "")).values())
    return values
