"""The import rules of docs/architecture.md, "Packages and what each may import", checked on
the import graph that grimp builds from the source (every import statement, including those
inside functions and under TYPE_CHECKING): a rule that only a document states is broken by
the first hurried change."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("guard_engine", "proxy")

@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _imports(graph: grimp.ImportGraph, package: str) -> list[tuple[str, str]]:
    """(importer, imported) for every direct import made by a module of `package`."""
    return [
        (module, imported)
        for module in sorted(graph.modules)
        if _under(module, package)
        for imported in sorted(graph.find_modules_directly_imported_by(module))
    ]


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
        # Moderation reports through its own interfaces (proxy.moderation.observer).
        ("proxy.moderation", ["proxy.observability", "proxy.assembly"]),
        ("proxy.observability", ["proxy.assembly"]),
    ],
)
def test_package_does_not_import(
    graph: grimp.ImportGraph, package: str, forbidden: list[str]
) -> None:
    found = [
        f"{importer} imports {imported}"
        for importer, imported in _imports(graph, package)
        if any(_under(imported, prefix) for prefix in forbidden)
    ]
    assert found == []


@pytest.mark.parametrize(
    "module", ["proxy.app", "proxy.state", "proxy.forward", "proxy.relay", "proxy.context"]
)
def test_gateway_core_serves_without_moderation_at_import(
    graph: grimp.ImportGraph, module: str
) -> None:
    """`create_app(moderation=False)` serves a bare passthrough: the core imports neither
    the pipeline nor the assembly at module level (the lifespan imports the assembly)."""
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text().splitlines()
    top_level = [
        imported
        for imported in graph.find_modules_directly_imported_by(module)
        if any(  # an unindented import line runs when the module is imported
            not source[detail["line_number"] - 1][:1].isspace()
            for detail in graph.get_import_details(importer=module, imported=imported)
        )
    ]
    assert [m for m in top_level if _under(m, "proxy.moderation")] == []
    assert [m for m in top_level if _under(m, "proxy.assembly")] == []


def test_only_the_assembly_imports_both_moderation_and_observability(
    graph: grimp.ImportGraph,
) -> None:
    both = [
        module
        for module in sorted(graph.modules)
        if _under(module, "proxy")
        # Handlers may use small pieces of both; each package may import the other's pieces.
        and not any(
            _under(module, p)
            for p in ("proxy.handlers", "proxy.moderation", "proxy.observability")
        )
        and {
            top
            for imported in graph.find_modules_directly_imported_by(module)
            for top in ("proxy.moderation", "proxy.observability")
            if _under(imported, top)
        }
        == {"proxy.moderation", "proxy.observability"}
    ]
    assert both == ["proxy.assembly"]


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    """No two modules depend on each other, directly or through others (an import of b by a
    is part of a cycle exactly when a chain leads from b back to a)."""
    cycles = {
        tuple(sorted((module, imported)))
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    }
    assert cycles == set()
