"""Regenerate docs/results.md (tables, goal checks, figures) — what ``make results`` runs.

Cases: the recorded trace ``synced_tacc.csv`` at polls of 16, 64 and 180 s (scored against the
held-out centered median), and every simulator scenario at 64 s (scored against the truth).
The trace is found in ``$CHRONOTICK_DATA_DIR`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from chronotickd.replay.cli import report
from chronotickd.replay.methods import BASELINES, CLASSICAL, default_method
from chronotickd.replay.runner import ReplayResult, replay
from chronotickd.replay.trace import load_trace
from chronotickd.sim.model import simulate
from chronotickd.sim.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]
TACC = "synced_tacc.csv"
TACC_POLLS = (16.0, 64.0, 180.0)
SCENARIO_POLL = 64.0
SCENARIO_SEED = 1


ACCURACY_BEGIN = "<!-- accuracy-matrix -->"  # the block benchmarks/accuracy_report.py owns
ACCURACY_END = "<!-- /accuracy-matrix -->"


def data_dir() -> Path:
    """Where the shared recorded traces are (CI clones the repo with shared/ beside it)."""
    env = os.environ.get("CHRONOTICK_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def goal_check(res: ReplayResult, recorded: bool) -> tuple[bool, str]:
    """The issue's goals for the default method against the best baseline (lowest MAE)."""
    name = res.default_method
    eng = res.runs.get(name)
    base = {n: r.metrics for n, r in res.runs.items() if n in BASELINES}
    if eng is None or not base:
        return False, f"{name} or baselines missing"
    best = min(base, key=lambda n: base[n]["mae_s"])
    b = base[best]
    e = eng.metrics
    checks = [("coverage ≥ 0.95", e["coverage"] >= 0.95, f"{e['coverage']:.4f}")]
    if recorded:
        checks.append(("MAE ≤ best baseline", e["mae_s"] <= b["mae_s"],
                       f"{e['mae_s'] * 1e3:.3f} vs {best} {b['mae_s'] * 1e3:.3f} ms"))
        checks.append(("p99 ≤ 1.2× best baseline's", e["p99_s"] <= 1.2 * b["p99_s"],
                       f"{e['p99_s'] * 1e3:.3f} vs {best} {b['p99_s'] * 1e3:.3f} ms"))
    else:
        checks.append(("MAE ≤ 1.2× best baseline", e["mae_s"] <= 1.2 * b["mae_s"],
                       f"{e['mae_s'] * 1e3:.3f} vs {best} {b['mae_s'] * 1e3:.3f} ms"))
    ok = all(c[1] for c in checks)
    text = "; ".join(f"{label}: {'met' if good else 'NOT met'} ({val})"
                     for label, good, val in checks)
    return ok, text


def md_table(res: ReplayResult) -> str:
    rows = ["| method | MAE ms | p95 ms | p99 ms | max ms | coverage | mean bound ms "
            "| median bound ms | n |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in res.runs.items():
        m = run.metrics
        label = f"**{name}** (default)" if name == res.default_method else name
        rows.append(f"| {label} | {m['mae_s'] * 1e3:.3f} | {m['p95_s'] * 1e3:.3f} | "
                    f"{m['p99_s'] * 1e3:.3f} | {m['max_s'] * 1e3:.3f} | {m['coverage']:.4f} | "
                    f"{m['mean_bound_s'] * 1e3:.3f} | {run.median_bound * 1e3:.3f} | {m['n']} |")
    for name, reason in res.unavailable.items():
        rows.append(f"| {name} | unavailable: {reason} |||||||| ")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chronotickd.replay.results",
                                description="Regenerate docs/results.md and docs/img/*.png")
    p.add_argument("--out", default=str(REPO / "docs"), help="docs directory")
    p.add_argument("--methods", default=None,
                   help="comma-separated (default: the classical ones and the default method)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    methods = (args.methods.split(",") if args.methods
               else list(dict.fromkeys([*CLASSICAL, default_method()])))
    docs = Path(args.out)
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    tacc = data_dir() / TACC
    if not tacc.exists():
        print(f"results: {tacc} not found; set CHRONOTICK_DATA_DIR to the folder holding {TACC}",
              file=sys.stderr)
        return 2

    started = time.perf_counter()
    sections: list[str] = []
    summary: list[str] = []
    all_json: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="chronotick-results-") as tmp:
        cases: list[tuple[str, str, Path, float, bool]] = [
            (f"synced_tacc, poll {poll:g} s", f"tacc-poll{poll:g}", tacc, poll, True)
            for poll in TACC_POLLS]
        for name, (desc, model) in SCENARIOS.items():
            path = Path(tmp) / f"{name}.csv"
            simulate(model, SCENARIO_SEED).write_csv(path)
            cases.append((f"scenario `{name}`: {desc}", f"sim-{name}", path, SCENARIO_POLL,
                          False))
        for title, slug, path, poll, recorded in cases:
            trace = load_trace(path)
            res = replay(trace, poll, methods)
            text = report(res)
            print(f"== {title}\n{text}\n", flush=True)
            ok, check = goal_check(res, recorded)
            summary.append(f"| {title.split(':')[0]} | {'met' if ok else '**NOT met**'} | "
                           f"{check} |")
            eng = res.runs.get("engine")
            rate = f"{eng.rows_per_s:,.0f}" if eng else "n/a"
            if not args.no_plots:
                from chronotickd.replay.plot import plot_replay

                plot_replay(res, img / f"{slug}.png", title=title.split(":")[0])
            doc = res.to_json()
            doc["trace"] = TACC if recorded else f"chronotick-sim {slug[4:]} --seed " \
                                                  f"{SCENARIO_SEED}"
            all_json[slug] = doc
            sections.append("\n".join([
                f"### {title}", "",
                f"{len(trace)} rows, {(trace.t[-1] - trace.t[0]) / 3600:.2f} h, "
                f"{int(res.polled.sum())} polls, {int(res.scored.sum())} scored rows; truth: "
                f"{res.truth_kind}. Engine replay speed: {rate} rows/s.", "",
                md_table(res), "",
                f"Goals: {check}", "",
                "" if args.no_plots else f"![{slug}](img/{slug}.png)", ""]))
    elapsed = time.perf_counter() - started
    head = [
        "# Replay results",
        "",
        "Generated by `make results` (`python -m chronotickd.replay.results`); do not edit by "
        "hand. How the bench works and what the reference can and cannot show: "
        "[replay.md](replay.md).",
        "",
        "All figures in milliseconds. *coverage* is the share of scored rows whose truth lies "
        "inside the method's ±bound; *mean bound* is the mean half-width, *median bound* the "
        "typical one. Until it holds 3 samples the engine serves its first measurements' fit "
        "with their own wide bound (status unsynchronized), which dominates its mean bound; "
        "MAE and coverage count those rows too.",
        "",
        f"Methods: {', '.join(methods)}; default method: `{default_method()}`. "
        f"Simulated scenarios: 6 h, seed {SCENARIO_SEED}, poll {SCENARIO_POLL:g} s. "
        f"Whole run: {elapsed:.0f} s.",
        "",
        "## Goals",
        "",
        "| case | goals | detail |",
        "|---|---|---|",
        *summary,
        "",
        "## Tables and figures",
        "",
    ]
    # keep the accuracy matrix block (benchmarks/accuracy_report.py writes it)
    old = (docs / "results.md").read_text() if (docs / "results.md").exists() else ""
    keep = ""
    if ACCURACY_BEGIN in old and ACCURACY_END in old:
        keep = ("\n" + ACCURACY_BEGIN + old.split(ACCURACY_BEGIN, 1)[1].split(ACCURACY_END, 1)[0]
                + ACCURACY_END + "\n")
    (docs / "results.md").write_text("\n".join(head + sections).rstrip() + "\n" + keep)
    (docs / "results.json").write_text(json.dumps(all_json, indent=1) + "\n")
    print(f"results: wrote {docs / 'results.md'} and {len(sections)} figures in {elapsed:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
