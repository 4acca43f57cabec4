"""Coverage and error of chronotickd's answers against known truth, under the clock rig.

Each scenario of tests/rig/scenarios.py (every key of its SCENARIOS registry) runs a
shimmed daemon (its clock wrong in a known way) against a real chronyd on loopback (d: a
leap-aware responder); every `now` is scored against the harness's own clock. Prints, per
scenario: queries, coverage (the answer meets the query's send..receive truth window),
exact coverage (the answer contains the exact truth at the daemon's own clock read, which
the harness knows through the shim's model: a window widened by the harness's scheduling
cannot hide a miss), MAE and p99 of the served midpoint against that exact truth, median
bound half-width, median and 99th-percentile query window, seconds to synchronized.

    python benchmarks/bench_truth.py --quick [--json out.json]   # the suite's durations
    python benchmarks/bench_truth.py --full                      # 10× longer, ≥ 1000 queries

Exits 1 when a scenario misses its goal (coverage and exact coverage ≥ 0.99, ≥ 1000 queries
under --full; scenario a MAE ≤ 100 µs). Needs root (chronyd, setpriv) and gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO), str(REPO / "clients")]

from rig.harness import Rig  # noqa: E402
from rig.scenarios import SCENARIOS  # noqa: E402
from support import chronyd_server  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the suite's durations (default)")
    g.add_argument("--full", action="store_true", help="10x longer per scenario")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    p.add_argument("--only", help="comma-separated scenario keys")
    args = p.parse_args()
    scale = 10.0 if args.full else 1.0
    keys = args.only.split(",") if args.only else sorted(SCENARIOS)
    rows, ok = [], True
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'scenario':24} {'queries':>7} {'coverage':>9} {'exact':>7} {'MAE µs':>9} "
          f"{'p99 µs':>9} {'half-width µs':>14} {'window µs':>10} {'p99 win':>8} "
          f"{'to sync s':>9}")
    with chronyd_server() as server:
        for key in keys:
            with Rig() as rig:
                r = SCENARIOS[key](rig, server.server, scale)
            if hasattr(r, "note"):  # (h): what order_events said; it must never be wrong
                print(r.note, flush=True)
                ok &= r.violations == 0
            s = r.score
            row = {**r.as_json(), "load_avg_1m": round(os.getloadavg()[0], 2)}
            rows.append(row)
            good = (s.coverage >= 0.99 and s.coverage_exact >= 0.99
                    and (key != "a" or s.mae_s <= 100e-6)
                    and (not args.full or s.queries >= 1000))
            ok &= good
            sync = f"{r.to_sync_s:.1f}" if r.to_sync_s is not None else "-"
            print(f"{r.scenario:24} {s.queries:7d} {s.coverage:9.4f} {s.coverage_exact:7.4f} "
                  f"{s.mae_s * 1e6:9.1f} {s.p99_s * 1e6:9.1f} {s.half_width_s * 1e6:14.1f} "
                  f"{s.window_s * 1e6:10.0f} {s.p99_window_s * 1e6:8.0f} {sync:>9} "
                  f"{'ok' if good else 'FAIL'}", flush=True)
            if r.facts:
                print("    " + ", ".join(f"{k} {v}" for k, v in r.facts.items()), flush=True)
            if args.json:  # after each scenario: a long --full run keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
