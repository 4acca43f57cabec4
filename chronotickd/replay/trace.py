"""Load a trace CSV into arrays: time, measured offset, round-trip delay, optional truth.

Empty or unparsable cells become NaN: a row without an offset is a gap (the poll there fails),
not an error, because real traces have them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_TIME_COL = "high_precision_time"
DEFAULT_OFFSET_COL = "ntp_offset"
DEFAULT_DELAY_COL = "ntp_delay"
DEFAULT_TRUTH_COL = "true_offset"  # written by chronotick-sim; used automatically when present
# δ = REALTIME − RAW (s): what other processes did to the system clock (chronotick-sim writes
# it; a recorded trace without it is a host whose system clock nobody moved, δ = 0)
DELTA_COL = "realtime_delta"


class TraceError(ValueError):
    """The trace cannot be replayed (missing column, no rows); the message says how to fix it."""


@dataclass(frozen=True)
class Trace:
    path: str
    t: np.ndarray  # seconds, strictly increasing
    offset: np.ndarray  # seconds, NaN where the row has no measurement
    delay: np.ndarray  # seconds, NaN where unknown
    truth: np.ndarray | None  # seconds; None when the trace has no truth column
    truth_col: str | None
    delta: np.ndarray | None = None  # δ = REALTIME − RAW per row; None: 0 (nobody moved it)

    def __len__(self) -> int:
        return len(self.t)

    def deltas(self) -> np.ndarray:
        """δ per row (zeros when the trace has none)."""
        return self.delta if self.delta is not None else np.zeros(len(self.t))


def _num(s: str | None) -> float:
    if s is None:
        return math.nan
    try:
        return float(s)
    except ValueError:
        return math.nan


def load_trace(
    path: str | Path,
    time_col: str = DEFAULT_TIME_COL,
    offset_col: str = DEFAULT_OFFSET_COL,
    delay_col: str = DEFAULT_DELAY_COL,
    truth_col: str | None = None,
) -> Trace:
    """Read ``path``; ``truth_col=None`` means "``true_offset`` if the file has it"."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        for need, flag in ((time_col, "--time-col"), (offset_col, "--offset-col"),
                           (delay_col, "--delay-col")):
            if need not in cols:
                raise TraceError(f"{path}: no column {need!r} (columns: {', '.join(cols)}); "
                                 f"name the right one with {flag}")
        if truth_col is not None and truth_col not in cols:
            raise TraceError(f"{path}: no truth column {truth_col!r} (columns: "
                             f"{', '.join(cols)}); drop --truth-col to use the held-out reference")
        if truth_col is None and DEFAULT_TRUTH_COL in cols:
            truth_col = DEFAULT_TRUTH_COL
        has_delta = DELTA_COL in cols
        rows = [(_num(r[time_col]), _num(r[offset_col]), _num(r[delay_col]),
                 _num(r[truth_col]) if truth_col else math.nan,
                 _num(r[DELTA_COL]) if has_delta else 0.0) for r in reader]
    arr = np.array(rows, dtype=float).reshape(-1, 5)
    arr = arr[np.isfinite(arr[:, 0])]
    if len(arr) == 0:
        raise TraceError(f"{path}: no rows with a numeric {time_col!r}")
    order = np.argsort(arr[:, 0], kind="stable")
    arr = arr[order]
    keep = np.concatenate(([True], np.diff(arr[:, 0]) > 0))  # drop duplicate timestamps
    arr = arr[keep]
    return Trace(
        path=str(path),
        t=arr[:, 0].copy(),
        offset=arr[:, 1].copy(),
        delay=arr[:, 2].copy(),
        truth=arr[:, 3].copy() if truth_col else None,
        truth_col=truth_col,
        delta=np.nan_to_num(arr[:, 4]) if has_delta else None,
    )
