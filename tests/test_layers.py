"""The import rules of docs/architecture.md, "Packages and what each may import", checked on
the source: a rule that only a document states is broken by the first hurried change."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> Iterator[tuple[str, str]]:
    """(file, imported module) for every import in the package's source files."""
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield str(path.relative_to(ROOT)), alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield str(path.relative_to(ROOT)), node.module


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("guard_engine", ["proxy"]),
        ("guard_engine.adapters", ["guard_engine.backends"]),
        (
            "proxy.upstreams",
            ["guard_engine", "proxy.moderation", "proxy.streaming", "proxy.observability"],
        ),
        ("proxy.streaming", ["guard_engine.engine", "guard_engine.backends"]),
        (
            "proxy.limits",
            ["guard_engine", "proxy.moderation", "proxy.streaming", "proxy.observability"],
        ),
    ],
)
def test_package_does_not_import(package: str, forbidden: list[str]) -> None:
    found = [
        f"{path} imports {module}"
        for path, module in _imports(package)
        if any(_under(module, prefix) for prefix in forbidden)
    ]
    assert found == []


@pytest.mark.parametrize("module", ["app", "state", "forward", "relay"])
def test_gateway_core_serves_without_moderation_at_import(module: str) -> None:
    tree = ast.parse((ROOT / "proxy" / f"{module}.py").read_text())
    top = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module is not None]
    assert not [m for m in top if _under(m, "proxy.moderation")]
    assert not [m for m in top if _under(m, "proxy.observability.wiring")]
