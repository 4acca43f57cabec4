"""Replay speed of the classical engine (rows/s) on synced_tacc at polls 16, 64, 180 s and on a
simulated mixed trace. Prints numbers; asserts nothing (timings vary with the machine's load)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chronotickd.replay.results import data_dir
from chronotickd.replay.runner import replay
from chronotickd.replay.trace import Trace, load_trace
from chronotickd.sim.model import simulate
from chronotickd.sim.scenarios import SCENARIOS


def main() -> int:
    cases: list[tuple[str, Trace, float]] = []
    tacc = data_dir() / "synced_tacc.csv"
    if tacc.exists():
        tr = load_trace(tacc)
        cases += [(f"synced_tacc poll {p:g}", tr, p) for p in (16.0, 64.0, 180.0)]
    else:
        print(f"({tacc} missing: set CHRONOTICK_DATA_DIR)")
    s = simulate(SCENARIOS["mixed"][1], 1)
    cases.append(("sim mixed poll 64", Trace("mixed", s.t, s.offset, s.delay, s.truth,
                                             "true_offset", s.delta), 64.0))
    for label, tr, poll in cases:
        t0 = time.perf_counter()
        res = replay(tr, poll, ["engine"])
        wall = time.perf_counter() - t0
        run = res.runs["engine"]
        print(f"{label:<24} {len(tr):>6} rows  engine {run.rows_per_s:>9,.0f} rows/s "
              f"(whole replay incl. reference {len(tr) / wall:,.0f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
