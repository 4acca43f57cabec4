"""The reference a real trace is scored against when it has no truth column.

A centered rolling median of the *held-out* measurements (rows not fed to any method) within
±60 s of each row. It removes queueing spikes and a minority path, and because it looks both
ways it has no lag. It cannot see a path asymmetry shared by most samples (nothing can from
offsets alone), and when the delay distribution is bimodal it follows the majority path.
See docs/replay.md for what that means for the figures.
"""

from __future__ import annotations

import numpy as np

from chronotickd.core.estimator import fast_median

HALF_WINDOW_S = 60.0
MIN_SAMPLES = 5  # fewer held-out measurements in the window: the row is not scored


def centered_median(
    t: np.ndarray,
    offset: np.ndarray,
    held_out: np.ndarray,
    half_window_s: float = HALF_WINDOW_S,
    min_samples: int = MIN_SAMPLES,
) -> np.ndarray:
    """Median of ``offset[held_out & finite]`` within ``±half_window_s``; NaN where too few."""
    ok = held_out & np.isfinite(offset)
    tt = t[ok]
    oo = offset[ok]
    lo = np.searchsorted(tt, t - half_window_s, side="left")
    hi = np.searchsorted(tt, t + half_window_s, side="right")
    out = np.full(len(t), np.nan)
    for i in range(len(t)):
        a, b = lo[i], hi[i]
        if b - a >= min_samples:
            out[i] = fast_median(oo[a:b])
    return out
