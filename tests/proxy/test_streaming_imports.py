"""The streaming modules import each other one way: no cycles, not even through an import
inside a function (hold-back picks monitor mode; monitor must not need hold-back back)."""

from __future__ import annotations

import ast
from pathlib import Path

import proxy.streaming

PACKAGE = Path(proxy.streaming.__file__).parent


def imports_within_package() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = f"proxy.streaming.{path.stem}"
        graph[name] = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("proxy.streaming.")
        }
    return graph


def test_no_import_cycle_among_streaming_modules() -> None:
    graph = imports_within_package()
    assert "proxy.streaming.monitor" in graph["proxy.streaming.holdback"]  # the test sees edges

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert cycles == []
