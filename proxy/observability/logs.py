"""structlog JSON logging with trace ids and secret redaction, for structlog and stdlib loggers.

Every event (the gateway's own, and stdlib records from uvicorn, httpx, litellm...) goes through
the same processors, the last but one of which is the `Redactor`: it removes Authorization
headers, API keys, bearer tokens and every secret value registered at startup (tenant keys,
upstream keys). Redaction runs after exceptions are formatted, so tracebacks are covered too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from proxy.timing import RequestTiming

REDACTED: Final = "[REDACTED]"
# Keys whose values are always secret, whatever they look like (compared lower-cased).
SENSITIVE_KEYS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "proxy_authorization",
        "api_key",
        "api-key",
        "apikey",
        "x-api-key",
        "access_token",
        "refresh_token",
        "client_secret",
        "password",
        "secret",
        "cookie",
        "set-cookie",
    }
)
# Shapes of credentials: bearer/basic tokens and OpenAI-style keys (sk-..., sk-proj-...).
# A bearer token must contain a non-letter (tokens have digits or punctuation) so that prose
# such as "bearer token" stays readable; registered secrets are removed whatever their shape.
_PATTERNS: Final = (
    r"(?i:bearer)\s+(?=[A-Za-z]*[^A-Za-z\s\"',;])[^\s\"',;]+",
    r"(?i:basic)\s+[A-Za-z0-9+/=]{8,}",
    r"sk-[A-Za-z0-9_-]{8,}",
)
_MIN_SECRET_LENGTH: Final = 4  # shorter values would redact ordinary words
_HANDLER_NAME: Final = "guardline-json"
# Loggers that libraries give their own handlers (uvicorn's default log config does, with
# propagate off): taken over so that their records reach the redacting root handler.
_TAKEN_OVER: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")
# Libraries that log at INFO per event on the request path or per file change.
_CHATTY: Final = ("httpx", "watchfiles.main")


class Redactor:
    """A structlog processor (and a plain text filter) that removes secrets from events."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._regex = re.compile("|".join(_PATTERNS))
        self.register(secrets)

    def register(self, values: Iterable[str]) -> None:
        """Add literal secret values (tenant keys, upstream keys); empty/short ones are ignored."""
        added = {v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LENGTH}
        if not added - self._secrets:
            return
        secrets = self._secrets | added
        # Longest first so that a secret containing another is removed whole.
        literals = [re.escape(s) for s in sorted(secrets, key=len, reverse=True)]
        # One regex, swapped atomically: a concurrent redact() sees the old or the new one.
        self._regex = re.compile("|".join([*literals, *_PATTERNS]))
        self._secrets = secrets

    def redact(self, text: str) -> str:
        return self._regex.sub(_replacement, text)

    def redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._regex.sub(_replacement, value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {
                k: REDACTED
                if isinstance(k, str) and k.lower() in SENSITIVE_KEYS
                else self.redact_value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact_value(v) for v in value]
        if isinstance(value, bytes):
            return self.redact(value.decode("utf-8", "replace"))
        # Anything else would be str()-ed by the renderer: do it here so it is redacted too.
        return self.redact(str(value))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            if key.lower() in SENSITIVE_KEYS:
                event_dict[key] = REDACTED
            elif not (value is None or isinstance(value, bool | int | float)):
                event_dict[key] = self.redact_value(value)
        return event_dict


def _replacement(match: re.Match[str]) -> str:
    text = match.group(0)
    head = text[:6].lower()
    if head.startswith("bearer"):
        return "Bearer " + REDACTED
    if head.startswith("basic"):
        return "Basic " + REDACTED
    return REDACTED


class _JSONHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose failure report cannot leak: logging's default handleError
    prints the record's message and arguments, unredacted, to stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        sys.stderr.write(
            f"guardline: a log record from {record.name} could not be written "
            f"({type(error).__name__})\n"
        )


def add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """trace_id/span_id of the current span (hex, as in traceparent), when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _serialize(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode("utf-8")


def configure_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
    quiet_libraries: bool = False,
) -> Redactor:
    """JSON lines to `stream` (default stdout) for structlog and the stdlib root logger.

    Returns the Redactor in force; `register_secrets` adds to it. Calling again replaces the
    previous configuration (and its handler), which keeps tests independent. uvicorn's loggers
    lose their own handlers and propagate to the root: run uvicorn with `log_config=None`, or
    it installs them again when it starts. `quiet_libraries` keeps the INFO lines libraries write
    per event out of the log (httpx: one per guard call; watchfiles: one per change seen in
    a policy folder); each call sets or clears it.
    """
    out = stream if stream is not None else sys.stdout
    redactor = redactor if redactor is not None else Redactor()
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = _JSONHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                structlog.processors.JSONRenderer(serializer=_serialize),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING if quiet_libraries else logging.NOTSET)
    for name in _TAKEN_OVER:
        library_logger = logging.getLogger(name)
        for own in list(library_logger.handlers):
            library_logger.removeHandler(own)
        library_logger.propagate = True
    return redactor


def current_redactor() -> Redactor | None:
    """The Redactor of the structlog configuration in force (None before configure_logging)."""
    for processor in structlog.get_config().get("processors", ()):
        if isinstance(processor, Redactor):
            return processor
    return None


def register_secrets(values: Iterable[str], redactor: Redactor | None = None) -> None:
    """Make these values disappear from every log line (call at startup and on config reload)."""
    target = redactor if redactor is not None else current_redactor()
    if target is None:
        raise RuntimeError("register_secrets: call configure_logging() first")
    target.register(values)


def log_request(
    logger: Any,
    *,
    timing: RequestTiming | None = None,
    **fields: Any,
) -> None:
    """The one line per request: `event="request"`, the given fields and `timings_ms`.

    Expected fields (by convention): request_id, tenant, route, policy, status, model,
    input_verdict, output_verdict, categories, degraded, stream.
    """
    event: MutableMapping[str, Any] = dict(fields)
    if timing is not None:
        event["timings_ms"] = timing.durations_ms()
    logger.info("request", **event)
