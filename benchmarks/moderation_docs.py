"""Where the moderation benchmark's results go: its section of docs/benchmarks.md.

Only the generated block between the markers is replaced on a re-run, so the analysis written
by hand around it (and every other section of the file) stays as it is.
"""

from __future__ import annotations

from pathlib import Path

from docs_block import replace_block
from moderation_procs import ROOT

BEGIN, END = "<!-- bench_moderation:begin -->", "<!-- bench_moderation:end -->"
SECTION = "## Moderation pipeline (issue 4)"


def write_docs(block: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace the generated block of our section in docs/benchmarks.md (prose around it stays)."""
    replace_block(path, begin=BEGIN, end=END, section=SECTION, block=block)
