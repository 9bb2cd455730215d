"""Cut OpenAI's OpenAPI spec down to what the schemathesis test needs.

    python -m tests.openapi.trim_spec path/to/openapi.yaml

(the spec is OpenAI's published OpenAPI document, github.com/openai/openai-openapi)

writes tests/openapi/openai-trimmed.json: `POST /chat/completions` and `POST /moderations`
with every component schema they reach through `$ref`, nothing else (the full spec is ~3 MB).
The spec is MIT licensed (tests/openapi/LICENSE); re-run this to update the copy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OPERATIONS = {"/chat/completions": "post", "/moderations": "post"}
OUT = Path(__file__).with_name("openai-trimmed.json")


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def trim(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {path: {method: spec["paths"][path][method]} for path, method in OPERATIONS.items()}
    components: dict[str, dict[str, Any]] = {}
    pending: set[str] = set()
    _refs(paths, pending)
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)
        node = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        _refs(node, pending)
    out: dict[str, Any] = {
        "openapi": spec["openapi"],
        "info": {**spec["info"], "description": "Trimmed copy of OpenAI's API spec (MIT)."},
        "servers": spec["servers"],
        "paths": paths,
        "components": {kind: dict(sorted(v.items())) for kind, v in sorted(components.items())},
    }
    if "securitySchemes" in spec["components"]:
        out["components"]["securitySchemes"] = spec["components"]["securitySchemes"]
        out["security"] = spec.get("security", [])
    return out


def main() -> None:
    source = Path(sys.argv[1])
    spec = yaml.safe_load(source.read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(trim(spec), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
