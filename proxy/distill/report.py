"""What `guardline distill` prints and draws: the held-out agreement table and the PNG of
agreement vs the share of checks answered locally."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from proxy.audit.record import iso_time
from proxy.distill.pipeline import STAGES, DistillResult
from proxy.distill.trail import TrailSelection

KEY_WIDTH = 44  # the table's first column: stage, label or category name


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def ratio(pair: tuple[int, int]) -> float | None:
    agree, n = pair
    return agree / n if n else None


def print_report(
    out: TextIO, policy: str, tenant: str | None, selection: TrailSelection, result: DistillResult
) -> None:
    decisions = selection.decisions
    split = result.split
    w = out.write
    w(f"policy {policy}   tenant {tenant or '(all)'}   decisions ")
    w(f"{iso_time(decisions[0].time)} .. {iso_time(decisions[-1].time)}\n")
    w(
        f"read {selection.read} records: {len(decisions)} model-guard decisions used, "
        f"{len(selection.disagreements)} THINK disagreements held back for review\n"
    )
    for reason, n in sorted(selection.skipped.items()):
        w(f"  skipped {n}: {reason}\n")
    w(
        f"split by request and time: train {len(split.train)} (oldest) | calibration "
        f"{len(split.calibration)} (from {_when(split.calibration_from)}) | held-out "
        f"{len(split.heldout)} (from {_when(split.heldout_from)})\n"
    )
    w("training rows: " + ", ".join(f"{k} {v}" for k, v in result.rows.items()) + "\n\n")
    w("agreement with the guard model on the held-out decisions (newest; never trained on,\n")
    w("thresholds chosen on the calibration decisions before them)\n")
    w(f"{'':{KEY_WIDTH}}{'n':>6}  {'head alone':>10}  {'local share':>11}  {'local agree':>11}  ")
    w("thresholds low / high\n")
    measured = result.measured
    for key in (*STAGES, "overall"):
        agree, n = measured.head_alone[key]
        local = measured.local[key]
        row = f"{key:{KEY_WIDTH}}{n:>6}  {pct(ratio((agree, n))):>10}  {pct(local.share):>11}  "
        row += f"{pct(local.agreement):>11}"
        if key in result.thresholds:
            t = result.thresholds[key]
            row += f"  {t.low:.4f} / {t.high:.4f}"
        w(row + "\n")
    for key in ("guard safe", "guard unsafe"):
        agree, n = measured.head_alone[key]
        w(f"{key:{KEY_WIDTH}}{n:>6}  {pct(ratio((agree, n))):>10}\n")
    for name, (agree, n) in measured.categories.items():
        label = f"category {name}"[:KEY_WIDTH]
        w(f"{label:{KEY_WIDTH}}{n:>6}  {pct(ratio((agree, n))):>10}\n")
    if not measured.categories:
        w("categories: the guard named none on held-out unsafe decisions\n")
    base_local, base_alone = measured.baseline_local, measured.baseline_head_alone
    if base_local is not None and base_alone is not None:
        w(
            f"{'shipped head, same rule':{KEY_WIDTH}}{base_alone[1]:>6}  "
            f"{pct(ratio(base_alone)):>10}  {pct(base_local.share):>11}  "
            f"{pct(base_local.agreement):>11}\n"
        )
    for note in result.notes:
        w(f"note: {note}\n")


def _when(epoch: float) -> str:
    return "-" if epoch == float("inf") else iso_time(epoch)


def write_png(path: Path, result: DistillResult, target: float) -> bool:
    """The held-out agreement of local answers against the share answered locally, one point
    per target agreement. False (and a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed (pip install 'guardline[train]'): no PNG written",
            file=sys.stderr,
        )
        return False
    points = [(t, s, a) for t, s, a in result.measured.curve if a is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    if points:
        ax.plot([100 * s for _, s, _ in points], [100 * a for _, _, a in points], "o-", ms=3)
        for t, s, a in points:
            if abs(t - target) < 1e-9:
                ax.plot([100 * s], [100 * a], "r*", ms=12, label=f"target {pct(t)}")
                ax.legend(loc="lower left")
    lowest = min((100 * a for _, _, a in points), default=90.0)
    ax.set_xlim(0, 101)
    ax.set_ylim(max(0.0, min(90.0, lowest - 1.0)), 100.5)
    ax.set_xlabel("checks answered locally (held-out, %)")
    ax.set_ylabel("local answers agreeing with the guard model (%)")
    ax.set_title("distilled head: agreement vs local share")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
