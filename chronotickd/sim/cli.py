"""``chronotick-sim SCENARIO OUT.csv``: write a simulated trace that chronotick-replay reads."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from chronotickd.sim.model import simulate
from chronotickd.sim.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="chronotick-sim",
        description="Simulate a clock measured by NTP; the CSV has a true_offset column, so "
                    "chronotick-replay scores against the truth with its default flags.",
        epilog="scenarios: " + "; ".join(f"{k}: {v[0]}" for k, v in SCENARIOS.items()))
    p.add_argument("scenario", choices=sorted(SCENARIOS), metavar="SCENARIO",
                   help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("out", metavar="OUT.csv", help="where to write the trace")
    p.add_argument("--hours", type=float, default=None, help="length (default 6)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = p.parse_args(argv)
    _, model = SCENARIOS[args.scenario]
    if args.hours is not None:
        if args.hours <= 0:
            print("chronotick-sim: --hours must be positive", file=sys.stderr)
            return 2
        model = dataclasses.replace(model, hours=args.hours)
    trace = simulate(model, args.seed)
    trace.write_csv(args.out)
    print(f"chronotick-sim: {args.scenario} ({model.hours:g} h, seed {args.seed}): "
          f"{len(trace.t)} rows → {args.out}", file=sys.stderr)
    return 0
