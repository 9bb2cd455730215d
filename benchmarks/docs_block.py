"""A benchmark's generated block in docs/benchmarks.md, between its own two markers.

Only the block is replaced on a re-run, so the analysis written by hand around it (and every
other section of the file) stays as it is; the first run appends the section with the block.
"""

from __future__ import annotations

from pathlib import Path


def replace_block(path: Path, *, begin: str, end: str, section: str, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    generated = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        before, _, rest = text.partition(begin)
        _, _, after = rest.partition(end)
        text = before + generated + after
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{generated}\n"
    path.write_text(text)
