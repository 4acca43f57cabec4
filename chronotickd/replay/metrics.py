"""Scores of one method's answers against the truth at the scored rows."""

from __future__ import annotations

import math

import numpy as np

METRIC_KEYS = ("mae_s", "p95_s", "p99_s", "max_s", "coverage", "mean_bound_s", "n")


def score(offset: np.ndarray, bound: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """MAE, p95/p99/max absolute error, coverage (truth inside ±bound), mean bound, n.

    Coverage counts a truth exactly on the edge as inside: the promise is
    ``earliest ≤ true time ≤ latest``.
    """
    offset = np.asarray(offset, dtype=float)
    bound = np.asarray(bound, dtype=float)
    truth = np.asarray(truth, dtype=float)
    n = len(truth)
    if n == 0:
        nan = math.nan
        return {"mae_s": nan, "p95_s": nan, "p99_s": nan, "max_s": nan, "coverage": nan,
                "mean_bound_s": nan, "n": 0}
    err = np.abs(offset - truth)
    return {
        "mae_s": float(err.mean()),
        "p95_s": float(np.percentile(err, 95)),
        "p99_s": float(np.percentile(err, 99)),
        "max_s": float(err.max()),
        "coverage": float(np.mean(err <= bound)),
        "mean_bound_s": float(bound.mean()),
        "n": int(n),
    }


def format_table(methods: dict[str, dict[str, float | int]], default: str | None = None,
                 median_bounds: dict[str, float] | None = None) -> str:
    """The metrics as a fixed-width table in milliseconds (what people read).

    ``median_bounds`` adds a column: the mean bound is dominated by the few rows answered
    before a method has data (16 s), the median shows the typical promise.
    """
    med = median_bounds or {}
    head = (f"{'method':<15}{'MAE ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>10}"
            f"{'coverage':>10}{'bound ms':>10}{'med bnd':>9}{'n':>8}")
    lines = [head, "-" * len(head)]
    for name, m in methods.items():
        mark = "*" if name == default else " "
        mb = med.get(name, math.nan) * 1e3
        lines.append(
            f"{name + mark:<15}{m['mae_s'] * 1e3:>9.3f}{m['p95_s'] * 1e3:>9.3f}"
            f"{m['p99_s'] * 1e3:>9.3f}{m['max_s'] * 1e3:>10.3f}{m['coverage']:>10.4f}"
            f"{m['mean_bound_s'] * 1e3:>10.3f}{mb:>9.3f}{m['n']:>8d}")
    return "\n".join(lines)
