"""Policies mounted from a Kubernetes ConfigMap hot-reload, from config.yaml to the watcher.

The kubelet lays a ConfigMap volume out as `default.yaml -> ..data/default.yaml`,
`..data -> ..2026_11_30_...` and updates it by writing a new timestamped directory, renaming
a new `..data` symlink over the old one and deleting the old directory. Here the same is
done with real directories and symlinks, the config is read by guardline's loader (as
deploy/k8s mounts it: config.yaml beside a `policies` directory) and the policy store's real
watcher must load the new version.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.policy.store import PolicyStore
from proxy.config import load_config

POLICY = "name: default\ndescription: test policy\nmode: {mode}\n"
CONFIG = (
    "upstreams:\n  openai: {type: openai}\n"
    "routes:\n  - {name: default, upstream: openai, policy: policies/default.yaml}\n"
)


def _write_version(policies: Path, version: str, mode: str) -> None:
    (policies / version).mkdir()
    (policies / version / "default.yaml").write_text(POLICY.format(mode=mode))


def _point_data_at(policies: Path, version: str) -> None:
    """The kubelet's atomic swap: a new symlink renamed over `..data`."""
    (policies / "..data_tmp").symlink_to(version)
    os.replace(policies / "..data_tmp", policies / "..data")


def _configmap_layout(root: Path) -> Path:
    policies = root / "policies"
    policies.mkdir()
    _write_version(policies, "..2026_11_30_04_00_00.1", "binary")
    _point_data_at(policies, "..2026_11_30_04_00_00.1")
    (policies / "default.yaml").symlink_to("..data/default.yaml")
    config = root / "config.yaml"
    config.write_text(CONFIG)
    return config


def test_the_loader_keeps_the_mounted_path_of_a_configmap_policy(tmp_path: Path) -> None:
    config = load_config(_configmap_layout(tmp_path), env={})
    # Not the timestamped directory the symlinks lead to: the next update deletes it.
    assert config.routes[0].policy == str(tmp_path / "policies" / "default.yaml")


async def test_a_configmap_update_reaches_the_policy_store(tmp_path: Path) -> None:
    config = load_config(_configmap_layout(tmp_path), env={})
    policy_path = config.routes[0].policy
    reloads: asyncio.Queue[tuple[str, CompiledPolicy | None, str | None]] = asyncio.Queue()
    store = PolicyStore(
        [policy_path], on_reload=lambda *event: reloads.put_nowait(event), rust_timeout_ms=100
    )
    assert store.get(policy_path).mode == "binary"
    task = asyncio.create_task(store.watch())
    try:
        await asyncio.wait_for(store.wait_watching(), timeout=30)
        policies = tmp_path / "policies"
        _write_version(policies, "..2026_11_30_04_05_00.2", "think")
        _point_data_at(policies, "..2026_11_30_04_05_00.2")
        shutil.rmtree(policies / "..2026_11_30_04_00_00.1")
        path, policy, error = await asyncio.wait_for(reloads.get(), timeout=30)
        assert (path, error) == (policy_path, None)
        assert policy is not None and policy.mode == "think"
        assert store.get(policy_path).mode == "think"
    finally:
        store.close()
        await asyncio.wait_for(task, timeout=30)
