"""The hook's power model (csrc/hook/src/speedup.c) replayed on recorded GPU runs.

    python bench/hook_power_model.py [--gap-w 134] bench/results/hook-frameworks-runs/run2-h100.json ...

Each run of tests/gpu/frameworks.py recorded, for every workload held to c% of the card's *time*
(the hook without figures), NVML's average power over the timed part and the throughput relative
to the unlimited rate. The workload's true speed-up per busy second is relative / c. The power
model's weight at that point is min(1.5, ((P_busy - gap) / (L - gap))^0.42) with
P_busy = gap + (P_avg - gap) / (c / 100), 1 where P_busy <= L. A weight equal to the speed-up
delivers exactly c% of the throughput: the last column is c x speed-up / weight, what the power
model would have delivered. ``--gap-w``: the card's power between windows; 134 W is the line
through the H100's matmul runs at 10% and 30% duty (215 and 377 W).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXPONENT, CAP = 0.42, 1.5  # SPEEDUP's POWER_EXPONENT and POWER_MAX_PM / 1000


def weight(p_avg: float, duty: float, gap: float, limit: float) -> tuple[float, float]:
    busy = gap + (p_avg - gap) / duty
    return (min(CAP, ((busy - gap) / (limit - gap)) ** EXPONENT) if busy > limit else 1.0), busy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--gap-w", type=float, default=134.0)
    a = ap.parse_args()
    print("| run | workload | limit % | NVML avg W | busy W (model) | speed-up | weight | delivered % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in a.runs:
        r = json.loads(path.read_text())
        limit = float(str(r.get("power_limit", "700")).split()[0])
        for section in ("compute", "frameworks"):
            for key, v in r.get(section, {}).items():
                if key.endswith("_off") or not v.get("relative_pct") or "power_w" not in v.get("nvml", {}):
                    continue
                kind, pct = key.rsplit("_", 1)
                c = int(pct)
                speed = v["relative_pct"] / c
                w, busy = weight(v["nvml"]["power_w"], c / 100, a.gap_w, limit)
                print(
                    f"| {path.stem} | {kind} | {c} | {v['nvml']['power_w']:.0f} | {busy:.0f} | {speed:.3f} | {w:.3f} "
                    f"| {c * speed / w:.1f} |"
                )


if __name__ == "__main__":
    main()
