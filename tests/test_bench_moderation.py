"""The moderation benchmark's own helpers: header parsing, percentiles, the docs block update.

The benchmark is a script (benchmarks/ is not a package); these tests import its modules the
way it does, from benchmarks/ on sys.path, and run without starting any server.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_moderation  # noqa: E402
import moderation_docs  # noqa: E402
from moderation_client import Series, pct, server_timing  # noqa: E402


def test_server_timing_parses_every_entry() -> None:
    header = "guard-input;dur=15.2, upstream;dur=100.4,guard-output;dur=3, overhead;dur=0.65"
    assert server_timing(header) == {
        "guard-input": 15.2,
        "upstream": 100.4,
        "guard-output": 3.0,
        "overhead": 0.65,
    }


def test_server_timing_ignores_missing_and_malformed_entries() -> None:
    assert server_timing(None) == {}
    assert server_timing("cache, upstream;desc=x, guard-input;dur=abc") == {}


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 0.5) == 50.0
    assert pct(values, 0.9) == 90.0
    assert pct(values, 0.99) == 99.0
    series = Series(list(reversed(values)))
    assert (series.p50, series.p90, series.p99) == (50.5, 90.0, 99.0)


def test_write_docs_appends_the_section_once_then_replaces_only_the_block(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("## Someone else's section\n\ntheir text\n")
    moderation_docs.write_docs("first table", docs)
    text = docs.read_text()
    assert text.count(moderation_docs.SECTION) == 1
    assert "first table" in text and text.startswith("## Someone else's section")

    # Prose written by hand after the generated block survives a re-run.
    docs.write_text(text + "\nhand-written analysis\n\n## A later section\n")
    moderation_docs.write_docs("second table", docs)
    text = docs.read_text()
    assert "first table" not in text and "second table" in text
    assert text.count(moderation_docs.SECTION) == 1
    assert text.index("second table") < text.index("hand-written analysis")
    assert text.endswith("## A later section\n")


def test_every_scenario_policy_is_a_valid_policy_file(tmp_path: Path) -> None:
    from guard_engine.policy.schema import PolicyFile
    from proxy.config import load_config

    config = bench_moderation.write_config(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    loaded = load_config(str(config))
    assert [r.name for r in loaded.routes] == [s.name for s in bench_moderation.SCENARIOS]
    for scenario in bench_moderation.SCENARIOS:
        raw = yaml.safe_load((tmp_path / f"{scenario.name}.yaml").read_text())
        policy = PolicyFile.model_validate(raw)
        assert policy.output.enabled == bool(scenario.output.get("enabled"))
        assert policy.input.enabled == (scenario.input is not bench_moderation.OFF)
