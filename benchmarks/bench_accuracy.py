"""The accuracy matrix (issue 13): every method × every simulator scenario × fixed polls
{16, 64, 256, 1024} s and the adaptive poll policy × seeds, plus the real trace.

Per cell: MAE, p99, coverage, mean half-width, polls spent (means over seeds; coverage is the
minimum over seeds, since a bound is a promise per run, not on average). Prints the matrix and
the checks of issue 13; ``--json PATH`` writes
``[{"scenario", "poll", "method", "mae_s", "p99_s", "coverage", "half_width_s", "polls"}]``.
``--quick``: 3 seeds of 6 h; timed figures are printed, not asserted. ``--first-seed 101``
scores seeds the bench's own figures do not use (a held-out check). The real trace needs
``CHRONOTICK_DATA_DIR`` when the checkout has no ``../shared/data``.

    nice python benchmarks/bench_accuracy.py --quick --json docs/accuracy.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from chronotickd.core.poll_policy import PollConfig
from chronotickd.replay.adaptive import replay_adaptive
from chronotickd.replay.results import data_dir
from chronotickd.replay.runner import replay
from chronotickd.replay.trace import Trace, load_trace
from chronotickd.sim.model import ClockModel, simulate
from chronotickd.sim.scenarios import SCENARIOS

FIXED_POLLS = (16.0, 64.0, 256.0, 1024.0)
BASELINES = ("none", "hold", "median", "linear", "theil-sen", "engine-v1")
FORECASTER = ("chronos-short",)
SIM_SCENARIOS = ("wander", "random-walk", "spikes", "outage", "step", "asymmetric",
                 "congestion", "disciplined", "drift", "mixed")
# the adaptive policy (core/poll_policy.py) judged by the engine's residuals: "adaptive" may
# poll every 16 s (a private server), "adaptive-64" is what the daemon does with a public
# server and `ntp.poll_budget_s: 64`: a 64 s floor and no burst after the initial one
ADAPTIVE = {"adaptive": PollConfig(minpoll_s=16.0, maxpoll_s=1024.0, budget_s=64.0),
            "adaptive-64": PollConfig(minpoll_s=64.0, maxpoll_s=1024.0, budget_s=64.0,
                                      confirm_bursts=False)}


def sim_trace(name: str, model: ClockModel, seed: int, hours: float) -> Trace:
    """A simulated clock as a replay trace, with its known truth."""
    s = simulate(dataclasses.replace(model, hours=hours), seed)
    return Trace(f"{name}#{seed}", s.t, s.offset, s.delay, s.truth, "true_offset", s.delta)


def _trace(scenario: str, seed: int, hours: float) -> Trace:
    if scenario == "synced_tacc":
        return load_trace(data_dir() / "synced_tacc.csv")
    return sim_trace(scenario, SCENARIOS[scenario][1], seed, hours)


def _cell_job(args: tuple[str, int, float, tuple[str, ...]]) -> list[dict]:
    scenario, seed, hours, methods = args
    return score_trace(_trace(scenario, seed, hours), scenario, seed, methods)


def score_trace(tr: Trace, scenario: str, seed: int, methods: tuple[str, ...]) -> list[dict]:
    """One trace's rows of the matrix: every method at every fixed poll, and the engine
    under each adaptive policy (``aggregate`` turns rows into cells)."""
    rows: list[dict] = []
    for poll in FIXED_POLLS:
        res = replay(tr, poll, methods)
        polls = int(res.polled.sum())  # requests sent, replies or not (as adaptive counts)
        for name, run in res.runs.items():
            rows.append(dict(scenario=scenario, seed=seed, poll=f"{poll:g}", method=name,
                             polls=polls, rows_per_s=run.rows_per_s, **run.metrics))
    for label, cfg in ADAPTIVE.items():
        for name in ("engine",):
            a = replay_adaptive(tr, name, cfg)
            rows.append(dict(scenario=scenario, seed=seed, poll=label, method=name,
                             polls=a.polls, rows_per_s=len(tr) / max(a.seconds, 1e-9),
                             **a.metrics))
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["scenario"], r["poll"], r["method"]), []).append(r)
    out = []
    for (scenario, poll, method), rs in cells.items():
        out.append(dict(
            scenario=scenario, poll=poll, method=method,
            mae_s=float(np.mean([r["mae_s"] for r in rs])),
            p99_s=float(np.mean([r["p99_s"] for r in rs])),
            coverage=float(min(r["coverage"] for r in rs)),
            half_width_s=float(np.mean([r["mean_bound_s"] for r in rs])),
            polls=float(np.mean([r["polls"] for r in rs])),
            seeds=len(rs)))
    return out


def best_baselines(cells: list[dict]) -> dict[tuple[str, str], dict]:
    """(scenario, fixed poll) → the baseline cell with the lowest MAE, the one the engine
    is checked against."""
    best: dict[tuple[str, str], dict] = {}
    for c in cells:
        if c["method"] == "engine" or c["poll"].startswith("adaptive"):
            continue
        key = (c["scenario"], c["poll"])
        if key not in best or c["mae_s"] < best[key]["mae_s"]:
            best[key] = c
    return best


def checks(cells: list[dict]) -> list[str]:
    """Issue 13's must-show checks, one line per failure (empty: all met)."""
    by = {(c["scenario"], c["poll"], c["method"]): c for c in cells}
    bests = best_baselines(cells)
    fails = []
    for (sc, poll, meth), c in sorted(by.items()):
        if meth != "engine" or poll.startswith("adaptive"):
            continue
        best = bests[(sc, poll)]
        if c["mae_s"] > 1.05 * best["mae_s"]:
            fails.append(f"{sc} poll {poll}: engine MAE {c['mae_s'] * 1e6:.1f} µs > 1.05 × "
                         f"{best['method']} {best['mae_s'] * 1e6:.1f} µs")
        if c["coverage"] < 0.99:
            fails.append(f"{sc} poll {poll}: engine coverage {c['coverage']:.4f} < 0.99")
    for sc in sorted({k[0] for k in by}):
        f64 = by.get((sc, "64", "engine"))
        a = by.get((sc, "adaptive", "engine"))
        if f64 is None or a is None:
            continue
        p, m = a["polls"] / f64["polls"], a["mae_s"] / f64["mae_s"]
        if (p <= 1.0 and m <= 1.0) or (p <= 0.25 and m <= 1.2):
            continue
        fails.append(f"{sc} adaptive: {a['polls']:.0f} polls ({p:.2f} × fixed 64's "
                     f"{f64['polls']:.0f}), MAE {a['mae_s'] * 1e6:.1f} µs ({m:.2f} × fixed-64 "
                     f"{f64['mae_s'] * 1e6:.1f} µs)")
    return fails


def paired_spread(rows: list[dict], a: tuple[str, str], b: tuple[str, str]
                  ) -> dict[str, tuple[float, float, int]]:
    """Per scenario, the MAE ratio of ``a`` = (poll, method) to ``b`` seed by seed: (mean,
    standard error, seeds). Why: the checks compare means over a few seeds, and one seed's
    ratio moves by ±10–30 % with where its poll grid falls among the clock's events (a 64 s
    grid shifted by 16 s changes a congestion seed's MAE from 4.5 to 8.0 µs, docs/accuracy.md);
    a 1 % difference is only a finding when it stands out of that spread."""
    by = {(r["scenario"], r["seed"], r["poll"], r["method"]): r["mae_s"] for r in rows}
    ratios: dict[str, list[float]] = {}
    for (sc, seed, poll, meth), mae in by.items():
        if (poll, meth) == a and (sc, seed, *b) in by and by[(sc, seed, *b)] > 0:
            ratios.setdefault(sc, []).append(mae / by[(sc, seed, *b)])
    out = {}
    for sc, rs in ratios.items():
        se = float(np.std(rs, ddof=1) / np.sqrt(len(rs))) if len(rs) > 1 else float("nan")
        out[sc] = (float(np.mean(rs)), se, len(rs))
    return out


def print_spread(rows: list[dict], cells: list[dict]) -> None:
    """The checks' ratios seed by seed, mean ± standard error (``paired_spread``): the
    adaptive policy against fixed 64 s, and at each fixed poll the engine against the
    cell's best baseline (by mean, as ``checks`` picks it)."""
    best = best_baselines(cells)
    cols = {"adaptive/64": paired_spread(rows, ("adaptive", "engine"), ("64", "engine"))}
    for poll in (f"{p:g}" for p in FIXED_POLLS):
        ratio: dict[str, tuple[float, float, int]] = {}
        for meth in {c["method"] for (_, p2), c in best.items() if p2 == poll}:
            spread = paired_spread(rows, (poll, "engine"), (poll, meth))
            ratio.update({sc: v for sc, v in spread.items()
                          if best[(sc, poll)]["method"] == meth})
        cols[f"{poll} s/best"] = ratio
    print("\nseed-by-seed MAE ratios, mean ± standard error over seeds (a check's margin is "
          "a finding only outside it):")
    print(f"{'scenario':<14}" + "".join(f"{k:>17}" for k in cols))
    for sc in sorted({sc for col in cols.values() for sc in col}):
        line = f"{sc:<14}"
        for col in cols.values():
            m, se, _ = col.get(sc, (float("nan"), float("nan"), 0))
            line += f"{m:>10.3f} ±{se:>5.3f}" if np.isfinite(se) else f"{m:>10.3f}       "
        print(line)


def print_matrix(cells: list[dict]) -> None:
    polls = [f"{p:g}" for p in FIXED_POLLS] + list(ADAPTIVE)
    for sc in dict.fromkeys(c["scenario"] for c in cells):
        print(f"\n== {sc} (MAE µs / coverage / polls)")
        methods = list(dict.fromkeys(c["method"] for c in cells if c["scenario"] == sc))
        print(f"{'method':<14}" + "".join(f"{p:>24}" for p in polls))
        by = {(c["poll"], c["method"]): c for c in cells if c["scenario"] == sc}
        for m in methods:
            line = f"{m:<14}"
            for p in polls:
                c = by.get((p, m))
                line += (f"{c['mae_s'] * 1e6:>10.1f} {c['coverage']:>6.3f} {c['polls']:>6.0f}"
                         if c else f"{'':>24}")
            print(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds of 6 h (≤ 5 min on 2 cores)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--first-seed", type=int, default=1,
                    help="seeds first-seed … first-seed + seeds − 1 (others: a held-out check)")
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--forecaster", action="store_true",
                    help="also score the forecaster alone (chronos-short; slow, needs torch)")
    ap.add_argument("--scenarios", default=",".join(SIM_SCENARIOS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 5)
    hours = args.hours or (6.0 if args.quick else 12.0)
    methods = (*BASELINES, "engine", *(FORECASTER if args.forecaster else ()))
    jobs = [(sc, seed, hours, methods) for sc in args.scenarios.split(",") if sc
            for seed in range(args.first_seed, args.first_seed + seeds)]
    if (data_dir() / "synced_tacc.csv").exists():
        jobs.append(("synced_tacc", 0, 0.0, methods))
    t0 = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for r in ex.map(_cell_job, jobs):
            rows.extend(r)
    wall = time.perf_counter() - t0
    cells = aggregate(rows)
    print_matrix(cells)
    speed = [r["rows_per_s"] for r in rows if r["method"] == "engine" and r["poll"] == "16"]
    print(f"\nwhole run {wall:.0f} s on {args.jobs} processes; engine replay at poll 16: "
          f"median {np.median(speed):,.0f} rows/s")
    print_spread(rows, cells)
    fails = checks(cells)
    print("checks: all met" if not fails else "checks failed:\n  " + "\n  ".join(fails))
    if args.json:
        keys = ("scenario", "poll", "method", "mae_s", "p99_s", "coverage", "half_width_s",
                "polls")
        args.json.write_text(json.dumps([{k: c[k] for k in keys} for c in cells], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
