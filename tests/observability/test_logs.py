"""JSON logs: one object per line, trace ids, and no secret ever reaches the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.observability import tracing
from proxy.observability.logs import (
    Redactor,
    configure_logging,
    current_redactor,
    log_request,
    register_secrets,
)
from proxy.timing import RequestTiming

TENANT_KEY = "gl-tenant-acme-7f3a9c1e5b"
UPSTREAM_KEY = "upstream-secret-Zq81xx0P"
OPENAI_STYLE = "sk-proj-AbCdEf0123456789_xyz"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("debug", stream=out)
    yield out
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    # httpcore's debug lines can come from connections of earlier tests closing late
    # (garbage-collected clients in other threads); they are not this test's events.
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [line for line in lines if not str(line.get("logger", "")).startswith("httpcore")]


def test_registered_secrets_never_appear_anywhere(
    captured: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    register_secrets([TENANT_KEY, UPSTREAM_KEY, "", "ab"])  # empty/short values are ignored
    log = structlog.get_logger("guardline.test")
    log.info("auth", headers={"Authorization": f"Bearer {TENANT_KEY}", "x-api-key": "whatever"})
    log.info("upstream call", url=f"https://api.example/v1?key={UPSTREAM_KEY}")
    log.warning(f"raw bearer token Bearer {OPENAI_STYLE} in the message")
    log.info(
        "nested", config={"upstreams": {"openai": {"api_key": UPSTREAM_KEY}}}, keys=[TENANT_KEY]
    )
    log.info("header", authorization=f"Bearer {TENANT_KEY}")
    log.info("object", value=RuntimeError(f"failed with {UPSTREAM_KEY}"))
    log.info("bytes", value=f"raw {TENANT_KEY}".encode())
    try:
        raise ValueError(f"upstream rejected key {UPSTREAM_KEY}")
    except ValueError:
        log.exception("upstream failed")
    # Foreign stdlib loggers (httpx, uvicorn) go through the same redaction.
    logging.getLogger("httpx").info("HTTP Request: POST %s", f"https://x/?k={TENANT_KEY}")
    try:
        raise ConnectionError(f"proxy auth {OPENAI_STYLE}")
    except ConnectionError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")

    text = captured.getvalue()
    stdio = capfd.readouterr()
    everything = text + stdio.out + stdio.err
    for secret in (TENANT_KEY, UPSTREAM_KEY, OPENAI_STYLE):
        assert secret not in everything
    lines = _lines(captured)
    assert len(lines) == 10
    events = {line["event"]: line for line in lines}
    assert events["auth"]["headers"]["Authorization"] == "[REDACTED]"
    assert events["header"]["authorization"] == "[REDACTED]"
    assert "raw bearer token Bearer [REDACTED] in the message" in events
    assert events["upstream failed"]["level"] == "error"
    assert "ValueError" in events["upstream failed"]["exception"]
    assert events["Exception in ASGI application"]["logger"] == "uvicorn.error"
    assert "ConnectionError" in events["Exception in ASGI application"]["exception"]


def test_lines_carry_the_current_trace_and_span_ids(captured: io.StringIO) -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing(span_processor=SimpleSpanProcessor(exporter))
    log = structlog.get_logger()
    with tracing.tracer(provider).start_as_current_span("r") as span:
        log.info("inside")
        logging.getLogger("foreign").warning("inside too")
    log.info("outside")
    provider.shutdown()
    inside, foreign, outside = _lines(captured)
    context = span.get_span_context()
    for line in (inside, foreign):
        assert line["trace_id"] == format(context.trace_id, "032x")
        assert line["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside


def test_request_line(captured: io.StringIO) -> None:
    timing = RequestTiming(start=0.0)
    timing.add("guard-input", 0.0, 0.010)
    timing.add("upstream", 0.010, 0.110)
    timing.finish(0.111)
    log_request(
        structlog.get_logger(),
        timing=timing,
        request_id="req-1",
        tenant="acme",
        route="kids",
        policy="kids-education@1a2b3c4d",
        status=200,
        input_verdict="safe",
        output_verdict="safe",
    )
    (line,) = _lines(captured)
    assert line["event"] == "request"
    assert line["tenant"] == "acme"
    assert line["timings_ms"] == {
        "guard-input": 10.0,
        "upstream": 100.0,
        "overhead": 1.0,
        "total": 111.0,
    }
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


def test_level_filtering(captured: io.StringIO) -> None:
    configure_logging("warning", stream=captured)
    log = structlog.get_logger()
    log.info("dropped")
    log.warning("kept")
    assert [line["event"] for line in _lines(captured)] == ["kept"]


def test_redactor_as_a_text_filter() -> None:
    redactor = Redactor([UPSTREAM_KEY])
    assert redactor.redact(f"key={UPSTREAM_KEY};") == "key=[REDACTED];"
    assert redactor.redact("Authorization: Basic dXNlcjpwYXNzd29yZA==") == (
        "Authorization: Basic [REDACTED]"
    )
    assert redactor.redact("nothing to see") == "nothing to see"
    # A secret containing another is removed whole.
    redactor.register([UPSTREAM_KEY + "-longer"])
    assert redactor.redact(f"{UPSTREAM_KEY}-longer") == "[REDACTED]"
    # Regex metacharacters in secrets are literal.
    redactor.register(["a+b*c(d)"])
    assert redactor.redact("xa+b*c(d)x") == "x[REDACTED]x"


def test_register_secrets_needs_a_configuration() -> None:
    structlog.reset_defaults()
    assert current_redactor() is None
    with pytest.raises(RuntimeError, match="configure_logging"):
        register_secrets(["whatever-secret"])


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="loud"):
        configure_logging("loud", stream=io.StringIO())


def test_uvicorn_loggers_are_taken_over() -> None:
    # What uvicorn's default log config leaves behind: own handler, no propagation.
    theirs = io.StringIO()
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(logging.StreamHandler(theirs))
    uvicorn_logger.propagate = False
    ours = io.StringIO()
    configure_logging("info", stream=ours)
    register_secrets([TENANT_KEY])
    try:
        logging.getLogger("uvicorn.error").error("bad key %s", TENANT_KEY)
        assert theirs.getvalue() == ""
        (line,) = _lines(ours)
        assert line["event"] == "bad key [REDACTED]" and line["logger"] == "uvicorn.error"
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
            root.removeHandler(handler)
        structlog.reset_defaults()


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot print")


def test_a_record_that_cannot_be_formatted_does_not_leak(
    captured: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    # Straight to our handler: pytest's own capture handler re-raises formatting errors.
    (ours,) = [h for h in logging.getLogger().handlers if h.get_name() == "guardline-json"]
    record = logging.LogRecord(
        "foreign",
        logging.WARNING,
        __file__,
        1,
        "key %s then %s",
        (TENANT_KEY, _Unprintable()),
        None,
    )
    ours.handle(record)
    err = capfd.readouterr().err
    assert TENANT_KEY not in err + captured.getvalue()
    assert "guardline: a log record from foreign could not be written (RuntimeError)" in err
