"""deploy/k8s: valid Kubernetes objects (offline, against the JSON schemas that
kubernetes-validate ships), and the settings the gateway relies on: probes, drain time,
config and policy mounts that load with guardline's own loader, the GPU of the guard."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from guard_engine.policy.compile import load_policy
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still in common support, and the newest the package knows.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# guardline's shutdown after SIGTERM besides server.graceful_shutdown_s twice (requests, then
# background work): the audit writer's close (proxy/observability/setup.py, 10 s) and the
# exporters' last flush (bounded by OTEL_BSP_EXPORT_TIMEOUT, 10 s in the Deployment).
AUDIT_CLOSE_S = 10
EXPORT_FLUSH_S = 10


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def gateway_container() -> dict[str, Any]:
    [container] = find("Deployment", "guardline")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_a_valid_kubernetes_object(version: str) -> None:
    docs = manifests()
    assert {d["kind"] for _, d in docs} >= {
        "Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for name, doc in docs:
        # strict: an unknown or misspelt field is an error, not silently dropped.
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc}")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["spec", "replcas"], 3),  # a misspelt field
        (["spec", "replicas"], "three"),  # a wrong type
        (["spec", "template", "spec", "terminationGracePeriodSeconds"], "90s"),
    ],
)
def test_a_broken_manifest_is_rejected(path: list[str], value: Any) -> None:
    doc = find("Deployment", "guardline")
    kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_the_config_map_file_is_up_to_date() -> None:
    # One config to edit: scripts/k8s_configmap.py writes configmap.yaml from the repository's.
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s_configmap.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_config_map_texts_are_the_repository_files() -> None:
    config = find("ConfigMap", "guardline-config")["data"]
    assert config == {"config.yaml": (ROOT / "deploy" / "config.yaml").read_text()}
    policies = find("ConfigMap", "guardline-policies")["data"]
    for name, text in policies.items():
        assert text == (ROOT / "policies" / name).read_text(), name


def _mounted_layout(tmp_path: Path) -> Path:
    """The gateway's view of its volumes, rebuilt under tmp_path: config.yaml (subPath) and
    the policies directory where the Deployment mounts them."""
    container = gateway_container()
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    config_mount, policies_mount = mounts["config"], mounts["policies"]
    assert config_mount["subPath"] == "config.yaml"
    # A directory, not subPath: only a directory mount sees ConfigMap updates.
    assert "subPath" not in policies_mount
    config_path = tmp_path / config_mount["mountPath"].lstrip("/")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(find("ConfigMap", "guardline-config")["data"]["config.yaml"])
    policies_dir = tmp_path / policies_mount["mountPath"].lstrip("/")
    policies_dir.mkdir(parents=True, exist_ok=True)
    for name, text in find("ConfigMap", "guardline-policies")["data"].items():
        (policies_dir / name).write_text(text)
    assert container["args"][-2:] == ["--config", config_mount["mountPath"]]
    return config_path


def test_the_mounted_config_loads_and_finds_its_policies_in_the_policies_mount(
    tmp_path: Path,
) -> None:
    config_path = _mounted_layout(tmp_path)
    env = {e["name"]: e.get("value", "set-from-secret") for e in gateway_container()["env"]}
    config = load_config(config_path, env=env)
    policies_dir = tmp_path / "etc" / "guardline" / "policies"
    for route in config.routes:
        assert Path(route.policy).parent == policies_dir
        load_policy(route.policy, known_guards=list(config.guards))
    # The Deployment's GUARD_URL names the guard's Service.
    guard = config.guards[config.default_guard]
    assert guard.type == "sglang"
    service = find("Service", "guardline-sglang")
    port = service["spec"]["ports"][0]["port"]
    assert guard.base_url == f"http://{service['metadata']['name']}:{port}"
    # State shared by the replicas lives in the Services the manifests expect beside them:
    # the audit trail in PostgreSQL, limits and verdicts in Redis.
    assert urlsplit(config.audit.url).hostname == "postgres"
    assert urlsplit(config.limits.redis_url).hostname == "redis"
    assert urlsplit(config.cache.redis_url).hostname == "redis"
    # The port the probes and the Service use is the one the gateway listens on.
    assert gateway_container()["ports"][0]["containerPort"] == config.server.port


def test_probes_and_a_grace_period_longer_than_the_drain(tmp_path: Path) -> None:
    container = gateway_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    config = load_config(_mounted_layout(tmp_path), env={})
    graceful = math.ceil(config.server.graceful_shutdown_s)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["OTEL_BSP_EXPORT_TIMEOUT"]) <= EXPORT_FLUSH_S * 1000
    drain = int(sleep[1]) + 2 * graceful + AUDIT_CLOSE_S + EXPORT_FLUSH_S
    grace = find("Deployment", "guardline")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > drain


def test_selectors_match_the_gateway_pods() -> None:
    deployment = find("Deployment", "guardline")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert find("Service", "guardline")["spec"]["selector"].items() <= labels.items()
    pdb = find("PodDisruptionBudget", "guardline")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find("HorizontalPodAutoscaler", "guardline")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "guardline"
    }
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB's one-at-a-time needs a second replica


def test_secrets_come_from_the_secret_and_the_guard_has_a_gpu() -> None:
    secret = find("Secret", "guardline-secrets")
    refs = [
        e["valueFrom"]["secretKeyRef"] for e in gateway_container()["env"] if "valueFrom" in e
        and "secretKeyRef" in e["valueFrom"]
    ]
    assert {r["name"] for r in refs} == {"guardline-secrets"}
    assert {r["key"] for r in refs} == set(secret["stringData"])
    [sglang] = find("Deployment", "guardline-sglang")["spec"]["template"]["spec"]["containers"]
    assert sglang["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--enable-multimodal" in sglang["args"]
