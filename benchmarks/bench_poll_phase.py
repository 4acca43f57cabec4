"""How much a fixed poll's accuracy depends on where its grid falls: the engine polled every
``--poll`` seconds from grids shifted by 0, ¼, ½ and ¾ of the interval, beside the adaptive
policy, seed by seed.

Why: issue 13 asks the adaptive policy to beat fixed 64 s polling at the same number of
polls in every scenario. On a stationary clock a uniform interval is already the best use of
a fixed number of polls, so the two differ by about 1 %, while one grid's MAE moves by ±10–30
% with its phase against the clock's events (congestion episodes, spikes, the wander's
turns). This prints that spread, so a difference between the two can be read against it.

    nice python benchmarks/bench_poll_phase.py --scenarios congestion,wander,mixed --seeds 3
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.bench_accuracy import ADAPTIVE, _trace
from chronotickd.replay.adaptive import replay_adaptive

PHASES = (0.0, 0.25, 0.5, 0.75)  # grid shifts, in intervals


class FixedGrid:
    """Poll at the trace's start, then at ``start + phase + k·interval``: a fixed poll whose
    grid is shifted (``replay_adaptive``'s ``schedule``)."""

    def __init__(self, start: float, interval: float, phase: float) -> None:
        self.start, self.interval, self.phase = start, interval, phase

    def on_result(self, now: float, outcome: str, residual_s: float = 0.0,
                  bound_s: float = 0.0) -> float:
        k = math.floor((now - self.start - self.phase) / self.interval) + 1
        return self.start + self.phase + k * self.interval


def _job(args: tuple[str, int, float, float]) -> tuple[str, int, list[float], float, int, int]:
    scenario, seed, hours, poll = args
    tr = _trace(scenario, seed, hours)
    start = float(tr.t[0])
    grids = [replay_adaptive(tr, "engine", schedule=FixedGrid(start, poll, f * poll))
             for f in PHASES]
    a = replay_adaptive(tr, "engine", ADAPTIVE["adaptive"])
    return (scenario, seed, [float(g.metrics["mae_s"]) for g in grids],
            float(a.metrics["mae_s"]), grids[0].polls, a.polls)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="congestion,wander,mixed,disciplined")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--poll", type=float, default=64.0)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    jobs = [(sc, seed, args.hours, args.poll) for sc in args.scenarios.split(",") if sc
            for seed in range(args.first_seed, args.first_seed + args.seeds)]
    print(f"engine MAE µs, fixed {args.poll:g} s with its grid shifted by "
          + ", ".join(f"{f:g}" for f in PHASES) + " of an interval; the adaptive policy "
          "(budget 64 s) beside it")
    print(f"{'scenario':<13}{'seed':>5}" + "".join(f"{f'+{f:g}':>9}" for f in PHASES)
          + f"{'spread':>9}{'adaptive':>10}{'polls':>12}")
    totals: dict[str, list[float]] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for sc, seed, grids, adaptive, polls, a_polls in ex.map(_job, jobs):
            g = np.array(grids) * 1e6
            print(f"{sc:<13}{seed:>5}" + "".join(f"{x:>9.2f}" for x in g)
                  + f"{(g.max() - g.min()) / g.mean() * 100:>8.0f}%{adaptive * 1e6:>10.2f}"
                  + f"{polls:>6}/{a_polls:<5}")
            t = totals.setdefault(sc, [0.0, 0.0, 0.0])
            t[0] += grids[0]
            t[1] += float(np.mean(grids))
            t[2] += adaptive
    print("\nadaptive MAE / fixed MAE, summed over seeds: against the unshifted grid (what "
          "bench_accuracy compares) and against the mean of the shifted grids")
    for sc, (g0, gm, a) in totals.items():
        print(f"{sc:<13} {a / g0:.3f}  {a / gm:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
