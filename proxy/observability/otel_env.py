"""The few OTEL_* decisions the OpenTelemetry SDK leaves to the application; it reads the rest.

The SDK itself reads, from the process environment:

- `TracerProvider`: OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_SDK_DISABLED;
- `Resource.create`: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES;
- `BatchSpanProcessor` / `BatchLogRecordProcessor`: OTEL_BSP_* / OTEL_BLRP_*;
- the OTLP exporters: OTEL_EXPORTER_OTLP_(TRACES_|LOGS_)ENDPOINT, _HEADERS, _TIMEOUT,
  _COMPRESSION, _CERTIFICATE and friends.

Which exporter to build (OTEL_TRACES_EXPORTER, OTEL_LOGS_EXPORTER) and which OTLP protocol
(OTEL_EXPORTER_OTLP_PROTOCOL) are read by OpenTelemetry's auto-instrumentation, which guardline
does not use, so they are read here, with one deliberate difference: unset means no exporter
unless an OTLP endpoint is set (the SDK's default, OTLP to localhost, would log connection
errors at a collector nobody configured).
"""

from __future__ import annotations

import os
from typing import Final, Literal

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.util.re import parse_env_headers

Signal = Literal["traces", "logs"]
Protocol = Literal["http/protobuf", "grpc"]

GRPC_PACKAGE: Final = "opentelemetry-exporter-otlp-proto-grpc"
# Resource.create's fallback service name when neither variable names one.
_SDK_UNKNOWN_SERVICE: Final = "unknown_service"


class OtelConfigError(ValueError):
    """An OTEL_* variable asks for something this installation cannot do (named in the message)."""


def _value(name: str) -> str:
    return os.environ.get(name, "").strip()


def resource(service_name: str) -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named `service_name`
    when the environment names no service."""
    detected = Resource.create()
    name = detected.attributes.get(SERVICE_NAME)
    if isinstance(name, str) and name.startswith(_SDK_UNKNOWN_SERVICE):
        return detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


def sdk_disabled() -> bool:
    """OTEL_SDK_DISABLED=true: the providers hand out no-op tracers and loggers by themselves;
    this only spares building exporters (and their threads) nobody will use."""
    return _value("OTEL_SDK_DISABLED").lower() == "true"


def exporter_names(signal: Signal) -> list[str]:
    """OTEL_<SIGNAL>_EXPORTER as a list; unset: `otlp` if an OTLP endpoint is set, else none."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    raw = _value(variable).lower()
    if not raw:
        endpoint = _value(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or _value(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if "none" in names:
        return []
    for name in names:
        if name not in ("otlp", "console"):
            raise OtelConfigError(f"{variable}={name!r} is not supported (otlp, console or none)")
    return names


def otlp_protocol(signal: Signal) -> Protocol:
    """OTEL_EXPORTER_OTLP_(<SIGNAL>_)PROTOCOL: which exporter class serves `otlp`."""
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    if not _value(variable):
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = _value(variable) or "http/protobuf"
    if protocol == "grpc":
        return "grpc"
    if protocol == "http/protobuf":
        return "http/protobuf"
    raise OtelConfigError(f"{variable}={protocol!r} is not supported (http/protobuf or grpc)")


def grpc_missing(exc: ImportError) -> OtelConfigError:
    error = OtelConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the {GRPC_PACKAGE} package "
        f"(pip install {GRPC_PACKAGE}), or use http/protobuf"
    )
    error.__cause__ = exc
    return error


def header_values() -> list[str]:
    """Every OTLP header value (collector API keys), so that the logs redact them."""
    values: list[str] = []
    for variable in (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    ):
        values.extend(parse_env_headers(_value(variable), liberal=True).values())
    return values
