"""The cascade benchmark's config is one the gateway loads, and its docs block is replaced in
place (no server started)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cascade  # noqa: E402

from proxy.config import load_config  # noqa: E402
from proxy.config_schema import CascadeGuardConfig  # noqa: E402


def test_the_generated_config_loads_with_both_cascades(tmp_path: Path) -> None:
    path = bench_cascade.write_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:8")
    config = load_config(path, env={})
    local, fallthrough = config.guards["local"], config.guards["fallthrough"]
    assert isinstance(local, CascadeGuardConfig) and isinstance(fallthrough, CascadeGuardConfig)
    assert (local.guard, local.recheck_sample) == ("g", 0.0)
    assert [r.name for r in config.routes] == [s.name for s in bench_cascade.SCENARIOS]


def test_write_docs_replaces_only_its_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nother section\n")
    bench_cascade.write_docs("first", docs)
    bench_cascade.write_docs("second", docs)
    text = docs.read_text()
    assert text.count(bench_cascade.SECTION) == 1 and "first" not in text and "second" in text
    assert text.startswith("# Benchmarks\n\nother section\n")
