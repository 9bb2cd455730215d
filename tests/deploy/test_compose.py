"""deploy/docker-compose.yaml against the Compose Specification's JSON schema (vendored in
tests/deploy/schemas, see its README), and the pieces of the stack agreeing with each other:
the files it mounts exist, nginx's replicas are its gateway services, the gateway config
loads with guardline's own loader as the containers see it, the collector's pipelines use
what it defines. No Docker engine is needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from guard_engine.policy.compile import load_policy
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
GATEWAYS = ["gateway-1", "gateway-2", "gateway-3"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    return loaded


def errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_schema_is_the_vendored_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["title"] == "Compose Specification"


def test_the_compose_file_matches_the_compose_specification() -> None:
    assert errors(compose()) == []


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("nginx", "imagee", "nginx:1.27"),  # a misspelt key
        ("redis", "expose", "6379"),  # a string where a list belongs
        ("gateway-1", "depends_on", {"redis": {"condition": "when_ready"}}),  # unknown value
    ],
)
def test_a_broken_compose_file_is_rejected(service: str, key: str, value: Any) -> None:
    document = compose()
    document["services"][service][key] = value
    assert errors(document) != []


def test_the_stack_has_its_services_and_three_identical_replicas() -> None:
    services = compose()["services"]
    assert set(services) == {*GATEWAYS, "nginx", "redis", "postgres", "otel-collector", "sglang"}
    assert all(services[name] == services[GATEWAYS[0]] for name in GATEWAYS)
    # Only nginx is published, on the loopback address.
    assert [name for name, s in services.items() if "ports" in s] == ["nginx"]
    assert services["nginx"]["ports"] == ["127.0.0.1:8080:8080"]
    # The GPU reservation is there to uncomment, not active: the stack starts without a GPU.
    assert "deploy" not in services["sglang"]
    text = (DEPLOY / "docker-compose.yaml").read_text()
    assert re.search(r"#\s+capabilities: \[gpu\]", text)


def test_every_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_nginx_balances_over_the_gateway_services_on_their_port() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    assert re.findall(r"server (gateway-\d+):8080 ", conf) == GATEWAYS
    assert "listen 8080;" in conf
    for name in GATEWAYS:
        assert compose()["services"][name]["expose"] == ["8080"]


def test_the_gateway_config_loads_as_the_containers_see_it(tmp_path: Path) -> None:
    gateway = compose()["services"][GATEWAYS[0]]
    mounts = dict(v.split(":")[:2] for v in gateway["volumes"])
    config_in_container = gateway["command"][gateway["command"].index("--config") + 1]
    # Rebuild the container's /etc/guardline from the bind mounts.
    for source, target in mounts.items():
        there = tmp_path / target.lstrip("/")
        there.parent.mkdir(parents=True, exist_ok=True)
        there.symlink_to((DEPLOY / source).resolve())
    # ${VAR:-default} as Compose passes it: its own defaults, resolved from an empty shell.
    env = {
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in gateway["environment"].items()
    }
    config = load_config(tmp_path / config_in_container.lstrip("/"), env=env)
    assert config.server.host == "0.0.0.0" and config.server.port == 8080
    assert config.limits.redis_url == "redis://redis:6379/0"
    assert config.default_guard == "local"  # no GPU unless GUARDLINE_GUARD=nemotron
    nemotron = config.guards["nemotron"]
    assert nemotron.type == "sglang" and nemotron.base_url == "http://sglang:30000"
    for route in config.routes:
        load_policy(route.policy, known_guards=list(config.guards))
    # The collector is where the replicas send their telemetry.
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert "4318" in compose()["services"]["otel-collector"]["expose"]


def test_the_collector_pipelines_use_what_the_collector_defines() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    pipelines = collector["service"]["pipelines"]
    assert {"traces", "logs"} <= set(pipelines)
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], component
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.endswith(":4318")
