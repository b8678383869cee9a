"""What a set of replays shows: the table beside the published figures, a CSV of the curves, a PNG.

Curves are sampled on a grid of arrived demand (``GRID_STEP`` % of capacity), enough to
plot and small enough to keep in the repository.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import published
from .replay import Curve

GRID_STEP = 1.0
GRID_END = 130.0


@dataclass(frozen=True, slots=True)
class Run:
    variant: str
    policy: str
    seed: int
    curve: Curve
    seconds: float


@dataclass(frozen=True, slots=True)
class Row:
    variant: str
    policy: str
    seeds: int
    at100: float
    sd100: float
    at130: float
    sd130: float
    seconds: float
    paper100: float | None
    paper130: float | None


def summarize(runs: Sequence[Run]) -> list[Row]:
    """One row per (variant, policy), in first-seen order: mean and spread over seeds."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.variant, r.policy), []).append(r)
    rows = []
    for (variant, policy), rs in groups.items():
        u100 = [r.curve.unallocated_at(100) for r in rs]
        u130 = [r.curve.unallocated_at(130) for r in rs]
        rows.append(
            Row(
                variant,
                policy,
                len(rs),
                statistics.fmean(u100),
                statistics.pstdev(u100),
                statistics.fmean(u130),
                statistics.pstdev(u130),
                sum(r.seconds for r in rs),
                published.figure(variant, policy, 100),
                published.figure(variant, policy, 130),
            )
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: unallocated GPU % (mean ± std over seeds) and the paper's figure."""
    out = [
        "| trace | policy | seeds | unalloc @100% | paper @100% | unalloc @130% | paper @130% | replay s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.variant} | {r.policy} | {r.seeds} | {r.at100:.2f} ± {r.sd100:.2f} | {_fig(r.paper100, r.at100)} "
            f"| {r.at130:.2f} ± {r.sd130:.2f} | {_fig(r.paper130, r.at130)} | {r.seconds:.1f} |"
        )
    return "\n".join(out)


def _fig(paper: float | None, ours: float) -> str:
    return "" if paper is None else f"{paper:.2f} ({ours - paper:+.2f})"


def write_csv(runs: Sequence[Run], path: Path) -> None:
    """Long format: variant, policy, seed, arrived %, allocated % on the grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "policy", "seed", "arrived_pct", "allocated_pct"])
        for r in runs:
            for x in grid():
                w.writerow([r.variant, r.policy, r.seed, f"{x:.1f}", f"{r.curve.allocated_pct_at(x):.3f}"])


def grid() -> list[float]:
    n = int(GRID_END / GRID_STEP)
    return [GRID_STEP * (i + 1) for i in range(n)]


def write_png(runs: Sequence[Run], path: Path) -> None:
    """Allocated GPU % against arrived demand, mean over seeds, one line per policy, a panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r.variant for r in runs))
    cols = min(3, len(variants))
    rows = (len(variants) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    xs = grid()
    for ax, variant in zip(axes.flat, variants, strict=False):
        for policy in dict.fromkeys(r.policy for r in runs if r.variant == variant):
            curves = [r.curve for r in runs if r.variant == variant and r.policy == policy]
            ys = [statistics.fmean(c.allocated_pct_at(x) for c in curves) for x in xs]
            ax.plot(xs, ys, label=f"{policy} ({100 - statistics.fmean(c.allocated_pct_at(100) for c in curves):.2f}%)")
        ax.plot([0, 100, GRID_END], [0, 100, 100], color="grey", linestyle=":", linewidth=0.8, label="ideal")
        ax.set_title(f"{variant}: unallocated @100% in legend")
        ax.set_xlabel("arrived GPU demand (% of capacity)")
        ax.set_ylabel("allocated GPU (%)")
        ax.set_xlim(60, GRID_END)
        ax.set_ylim(60, 101)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
