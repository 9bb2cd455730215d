"""Audit records as OpenTelemetry log records, exported over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from proxy.audit.otel_logs import audit_logger, setup_audit_logs
from proxy.audit.store import AuditStore
from proxy.audit.writer import AuditWriter
from proxy.observability.otel_env import OtelConfigError
from tests.audit.test_store import record
from tests.factories import OtelEnv


class LogsReceiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, ExportLogsServiceRequest]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: LogsReceiver

    def do_POST(self) -> None:
        request = ExportLogsServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, request))
        reply = ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[LogsReceiver]:
    server = LogsReceiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_audit_records_reach_an_otlp_logs_receiver(
    receiver: LogsReceiver, tmp_path: Path, otel_env: OtelEnv
) -> None:
    otel_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "gw"})
    provider = setup_audit_logs()
    writer = AuditWriter(AuditStore(tmp_path / "a.sqlite3"), 10, otel_logger=audit_logger(provider))
    written = record(categories=("Violence",))
    writer.submit(written)
    assert writer.close(30)
    assert provider.force_flush(10_000)
    provider.shutdown()

    ((path, request),) = receiver.requests
    assert path == "/v1/logs"
    resource_logs = request.resource_logs[0]
    service = {a.key: a.value.string_value for a in resource_logs.resource.attributes}
    assert service["service.name"] == "gw"
    scope_logs = resource_logs.scope_logs[0]
    assert scope_logs.scope.name == "guardline.audit"
    (log,) = scope_logs.log_records
    assert log.event_name == "guardline.audit"
    attributes = {a.key: a.value for a in log.attributes}
    assert attributes["guardline.audit.id"].string_value == written.id
    assert attributes["guardline.audit.verdict"].string_value == "unsafe"
    assert [
        v.string_value for v in attributes["guardline.audit.categories"].array_value.values
    ] == ["Violence"]
    assert log.time_unix_nano == int(written.time * 1e9)


def test_console_none_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "console")
    provider = setup_audit_logs(console_stream=out)
    audit_logger(provider).emit(body="hello", event_name="guardline.audit")
    provider.force_flush()
    provider.shutdown()
    assert json.loads(out.getvalue())["body"] == "hello"
    monkeypatch.delenv("OTEL_LOGS_EXPORTER")
    quiet = setup_audit_logs()  # no endpoint, no exporter: nothing is sent anywhere
    quiet.shutdown()
    with pytest.raises(OtelConfigError, match="OTEL_LOGS_EXPORTER='kafka'"):
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "kafka")
        setup_audit_logs()
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        return  # the gRPC exporter is installed here: nothing to refuse
    with pytest.raises(OtelConfigError, match="grpc"):
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")
        setup_audit_logs()
