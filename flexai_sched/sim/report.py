"""What a set of replays shows: the table beside the published figures, a CSV of the curves, a PNG.

Curves are kept on a grid of arrived demand (``GRID_STEP`` % of capacity from
``GRID_START``), enough to plot and small enough to keep in the repository.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import published
from .replay import Curve

GRID_START = 50.0
GRID_STEP = 2.0
GRID_END = 130.0


@dataclass(frozen=True, slots=True)
class Run:
    """One replay, reduced to what is reported: the two published points and the curve on the grid."""

    variant: str
    policy: str
    seed: int
    unallocated_100: float
    unallocated_130: float
    allocated_on_grid: tuple[float, ...]
    seconds: float
    # The published trace file on the published cluster: the paper's figures apply (runs
    # saved before this field existed were all of the published files).
    published: bool = True

    @staticmethod
    def of(variant: str, policy: str, seed: int, curve: Curve, seconds: float, published: bool = False) -> Run:
        return Run(
            variant,
            policy,
            seed,
            curve.unallocated_at(100),
            curve.unallocated_at(130),
            tuple(round(curve.allocated_pct_at(x), 3) for x in grid()),
            seconds,
            published,
        )


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
    rows = []
    for (variant, policy), rs in _groups(runs).items():
        u100 = [r.unallocated_100 for r in rs]
        u130 = [r.unallocated_130 for r in rs]
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
                published.figure(variant, policy, 100) if rs[0].published else None,
                published.figure(variant, policy, 130) if rs[0].published else None,
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
    """Per (variant, policy), on the grid: allocated GPU %, mean and range over seeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "variant",
                "policy",
                "seeds",
                "arrived_pct",
                "allocated_pct_mean",
                "allocated_pct_min",
                "allocated_pct_max",
            ]
        )
        for (variant, policy), rs in _groups(runs).items():
            for k, x in enumerate(grid()):
                ys = [r.allocated_on_grid[k] for r in rs]
                w.writerow(
                    [
                        variant,
                        policy,
                        len(rs),
                        f"{x:.0f}",
                        f"{statistics.fmean(ys):.3f}",
                        f"{min(ys):.3f}",
                        f"{max(ys):.3f}",
                    ]
                )


def grid() -> list[float]:
    n = int((GRID_END - GRID_START) / GRID_STEP)
    return [GRID_START + GRID_STEP * i for i in range(n + 1)]


def write_png(runs: Sequence[Run], path: Path) -> None:
    """Allocated GPU % against arrived demand, mean over seeds, one line per policy, a panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    variants = list(dict.fromkeys(v for v, _ in groups))
    cols = min(3, len(variants))
    nrows = (len(variants) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    xs = grid()
    for ax, variant in zip(axes.flat, variants, strict=False):
        for (v, policy), rs in groups.items():
            if v != variant:
                continue
            ys = [statistics.fmean(r.allocated_on_grid[k] for r in rs) for k in range(len(xs))]
            u100 = statistics.fmean(r.unallocated_100 for r in rs)
            ax.plot(xs, ys, label=f"{policy}: {u100:.2f}% unallocated @100%")
        ax.plot([GRID_START, 100, GRID_END], [GRID_START, 100, 100], color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(variant)
        ax.set_xlabel("arrived GPU demand (% of capacity)")
        ax.set_ylabel("allocated GPU (%)")
        ax.set_xlim(70, GRID_END)
        ax.set_ylim(70, 100.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.variant, r.policy), []).append(r)
    return groups
