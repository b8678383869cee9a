"""CPU seconds of one replay, from this checkout or another tree, for side-by-side speed checks.

    python bench/replay_cpu.py [--tree DIR] [--variant default] [--policy fragmentation] [--seed 42] [--repeat 3]

``--tree``: a checkout of another commit (e.g. ``git archive main | tar -x -C /tmp/main``) whose
``flexai_sched`` is imported instead of this one's. Prints the CPU seconds of each replay (the
trace loaded and the arrivals drawn beforehand) and the unallocated GPU % at 100% and 130%
arrived, so two trees' runs show both the time and whether they placed alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--variant", default="default")
    ap.add_argument("--policy", default="fragmentation")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from flexai_sched.sim import cli
    from flexai_sched.sim.replay import replay
    from flexai_sched.sim.workload import arrivals

    trace = cli._trace(cli.sources(None, args.variant)[0])
    pods = arrivals(trace, args.seed)
    for _ in range(args.repeat):
        started = time.process_time()
        curve = replay(trace, pods, args.policy, args.seed)
        cpu = time.process_time() - started
        print(
            f"{args.tree} {args.variant} {args.policy} seed {args.seed}: {cpu:.2f} s CPU, "
            f"unallocated {curve.unallocated_at(100):.4f} @100%, {curve.unallocated_at(130):.4f} @130%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
