"""``chronotick-replay``: score the engine and baselines on a recorded or simulated trace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chronotickd.replay.methods import CLASSICAL, METHODS, default_method
from chronotickd.replay.metrics import format_table
from chronotickd.replay.runner import DEFAULT_POLL_S, ReplayResult, replay
from chronotickd.replay.trace import (
    DEFAULT_DELAY_COL,
    DEFAULT_OFFSET_COL,
    DEFAULT_TIME_COL,
    TraceError,
    load_trace,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chronotick-replay",
        description="Replay a trace through the engine and baselines; print accuracy and "
                    "bound coverage per method.")
    p.add_argument("trace", help="CSV trace (one row per measurement instant)")
    p.add_argument("--time-col", default=DEFAULT_TIME_COL, help="local time, seconds")
    p.add_argument("--offset-col", default=DEFAULT_OFFSET_COL,
                   help="measured offset reference − system, seconds (empty = gap)")
    p.add_argument("--delay-col", default=DEFAULT_DELAY_COL, help="round-trip delay, seconds")
    p.add_argument("--truth-col", default=None,
                   help="true offset column (default: true_offset if present, else the "
                        "centered median of held-out rows)")
    p.add_argument("--poll", type=float, default=DEFAULT_POLL_S, metavar="SECONDS",
                   help=f"poll interval (default {DEFAULT_POLL_S:g})")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated, from: {', '.join(METHODS)} "
                        f"(default: {', '.join(CLASSICAL)} and the default method)")
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON ('-' = stdout)")
    p.add_argument("--plot", metavar="OUT.png", help="write a figure (matplotlib)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def report(res: ReplayResult) -> str:
    tr = res.trace
    lines = [
        f"trace {tr.path}: {len(tr)} rows, {(tr.t[-1] - tr.t[0]) / 3600:.2f} h, "
        f"poll {res.poll_s:g} s, {int(res.polled.sum())} polls, {int(res.scored.sum())} scored;"
        f" truth: {res.truth_kind}",
        format_table({n: r.metrics for n, r in res.runs.items()}, res.default_method,
                     {n: r.median_bound for n, r in res.runs.items()}),
        f"(* = default method {res.default_method}; bound = mean half-width, med bnd = median)",
    ]
    for name, reason in res.unavailable.items():
        lines.append(f"{name}: unavailable ({reason})")
    rates = ", ".join(f"{n} {r.rows_per_s:,.0f}" for n, r in res.runs.items())
    lines.append(f"rows/s: {rates}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            print(f"chronotick-replay: unknown method(s) {', '.join(unknown)}; "
                  f"known: {', '.join(METHODS)}", file=sys.stderr)
            return 2
    else:
        names = list(dict.fromkeys([*CLASSICAL, default_method()]))
    try:
        trace = load_trace(args.trace, args.time_col, args.offset_col, args.delay_col,
                           args.truth_col)
    except (OSError, TraceError) as exc:
        print(f"chronotick-replay: {exc}", file=sys.stderr)
        return 2
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    res = replay(trace, args.poll, names, progress=progress)
    text = report(res)
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        doc = json.dumps(res.to_json(), indent=2)
        if args.json == "-":
            print(doc)
        else:
            Path(args.json).write_text(doc + "\n")
    if args.plot:
        from chronotickd.replay.plot import plot_replay

        plot_replay(res, args.plot)
    return 0
