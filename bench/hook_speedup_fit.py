"""Fit the hook's throughput normalisation (E and KNEE in csrc/hook/src/compute.c) to GPU runs.

    python bench/hook_speedup_fit.py extract 13=OUT13/hook-results.json ... > points.json
    python bench/hook_speedup_fit.py fit bench/results/hook-h200-runs/speedup-points.json [--top 1980]

`extract` reads the compute phase of bench/hook_gpu.py runs (throughput-share mode, with
FLEXAI_TRACE): per (run, workload, limit) the busy fraction the hook measured (its `B` trace
events over the traced span) and the throughput delivered relative to the unlimited run, so
the speed per busy second is relative / busy. `fit` finds E and KNEE of

    speed-up = 1 + E * (top / ref - 1) * min(1, (1 - duty) / (1 - KNEE))

by least squares on what each point would have delivered with that weighting (limit x
measured speed / predicted speed, the duty held at what was measured), and prints the worst
error and each point's prediction for the fitted and the current constants.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def extract(specs: list[str]) -> list[dict[str, Any]]:
    points = []
    for spec in specs:
        run, _, path = spec.partition("=")
        results = json.loads(Path(path).read_text())
        for key, r in results.get("compute", {}).items():
            if not isinstance(r, dict) or not key.endswith("_work") or not r.get("trace_tail"):
                continue
            kind, limit, _ = key.split("_")
            rows = [line.split() for line in r["trace_tail"]]
            busy = [(int(t), int(v)) for t, what, v, *_ in rows if what == "B"]
            if len(busy) < 3:
                continue
            span_ns = (busy[-1][0] - busy[0][0]) * 1000  # trace times are in us
            duty = sum(v for _, v in busy[1:]) / span_ns
            points.append(
                {
                    "run": run,
                    "kind": kind,
                    "limit": int(limit),
                    "duty": round(duty, 4),
                    "relative": r["relative"],
                    "ref_mhz": results["ref_clock_mhz"],
                }
            )
    return points


def delivered(p: dict[str, Any], e: float, knee: float, top: float) -> float:
    speed = p["relative"] / p["duty"]
    predicted = 1 + e * (top / p["ref_mhz"] - 1) * min(1.0, (1 - p["duty"]) / (1 - knee))
    return float(p["limit"] * speed / predicted)


def fit(points: list[dict[str, Any]], top: float) -> tuple[float, float]:
    best: tuple[float, float, float] | None = None
    for e100 in range(40, 101):
        for k100 in range(20, 80, 5):
            err = sum((delivered(p, e100 / 100, k100 / 100, top) - p["limit"]) ** 2 for p in points)
            if best is None or err < best[0]:
                best = (err, e100 / 100, k100 / 100)
    assert best is not None
    return best[1], best[2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["extract", "fit"])
    ap.add_argument("inputs", nargs="+", help="extract: RUN=hook-results.json ...; fit: points.json")
    ap.add_argument("--top", type=float, default=1980.0, help="the card's top SM clock (MHz; H200: 1980)")
    ap.add_argument("--current", default="0.70,0.55", help="E,KNEE now in compute.c, for comparison")
    args = ap.parse_args()
    if args.mode == "extract":
        json.dump(extract(args.inputs), sys.stdout, indent=1)
        print()
        return 0
    points = [p for f in args.inputs for p in json.loads(Path(f).read_text())]
    e, knee = fit(points, args.top)
    cur_e, cur_knee = (float(x) for x in args.current.split(","))
    print(f"{len(points)} points; least squares: E = {e:.2f}, KNEE = {knee:.2f}")
    for label, (pe, pk) in (("fitted", (e, knee)), ("current", (cur_e, cur_knee))):
        errors = [delivered(p, pe, pk, args.top) - p["limit"] for p in points]
        print(f"{label} E={pe:.2f} KNEE={pk:.2f}: worst error {max(map(abs, errors)):.2f} points")
        for p, err in zip(points, errors, strict=True):
            print(
                f"  run {p['run']:>3} {p['kind']:6s} {p['limit']:3d}%: duty {p['duty']:.3f} "
                f"speed {p['relative'] / p['duty']:.3f} -> {p['limit'] + err:5.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
