"""Where the moderation benchmark's results go: its section of docs/benchmarks.md.

Only the generated block between the markers is replaced on a re-run, so the analysis written
by hand around it (and every other section of the file) stays as it is.
"""

from __future__ import annotations

from pathlib import Path

from moderation_procs import ROOT

BEGIN, END = "<!-- bench_moderation:begin -->", "<!-- bench_moderation:end -->"
SECTION = "## Moderation pipeline (issue 4)"


def write_docs(block: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace the generated block of our section in docs/benchmarks.md (prose around it stays)."""
    text = path.read_text() if path.exists() else ""
    generated = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        before, _, rest = text.partition(BEGIN)
        _, _, after = rest.partition(END)
        text = before + generated + after
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{generated}\n"
    path.write_text(text)
