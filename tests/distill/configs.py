"""The smallest gateway config distill accepts: one content-keeping policy `p`, one model
guard nobody calls (distill reads the trail, never the guard)."""

from __future__ import annotations

from pathlib import Path

import yaml


def minimal_config(directory: Path, *, audit_path: str) -> Path:
    (directory / "p.yaml").write_text(
        yaml.safe_dump({"name": "p", "description": "p", "audit": {"content": True}})
    )
    config = {
        "default_guard": "nemotron",
        "guards": {"nemotron": {"type": "sglang", "base_url": "http://127.0.0.1:9"}},
        "upstreams": {"u": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"name": "d", "upstream": "u", "policy": "p.yaml"}],
        "audit": {"path": audit_path},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
