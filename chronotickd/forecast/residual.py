"""The series the model sees: measured offsets minus a robust line, spikes clipped, in µs.

Why a residual: Chronos-Bolt scales every context by its own spread, so a drift or one spike
in the raw offsets inflates the scale and the error (docs/forecasting.md). After a robust line
fit the model only has to predict the curvature the line misses; the line carries the trend.
Shared by training and runtime so the model sees the same kind of input in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826
US = 1e6  # the model works in microseconds (float32-friendly, far above InstanceNorm's eps)
CLIP_K = 4.0  # residuals beyond k·sigma are clipped to it (spikes, wrong servers)
GAP_FACTOR = 4.0  # a hole longer than this × the median spacing cuts the context
MIN_CONTEXT = 16


@dataclass(frozen=True, slots=True)
class Prepared:
    """A context ready for the model, and what turns its forecast back into offsets."""

    t_last: float  # time of the newest measurement
    dt: float  # median spacing: forecast step k is at t_last + k·dt
    icpt: float  # line value at t_last (s)
    slope: float  # s/s
    sigma: float  # robust residual scale (s)
    context_us: np.ndarray  # clipped residuals in µs, oldest first

    def line(self, t: float | np.ndarray) -> float | np.ndarray:
        return self.icpt + self.slope * (np.asarray(t) - self.t_last)


def robust_line(t: np.ndarray, y: np.ndarray, iters: int = 3) -> tuple[float, float, float]:
    """(intercept at t[-1], slope, sigma): least squares re-fitted without points > 3σ."""
    x = t - t[-1]
    keep = np.ones(len(t), dtype=bool)
    icpt, slope, sigma = float(np.median(y)), 0.0, 0.0
    for _ in range(iters):
        if keep.sum() < 3:
            break
        xs, ys = x[keep], y[keep]
        xm = xs.mean()
        den = float(((xs - xm) ** 2).sum())
        slope = float(((xs - xm) * (ys - ys.mean())).sum() / den) if den > 0 else 0.0
        icpt = float(ys.mean() - slope * xm)
        r = y - icpt - slope * x
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(r - np.median(r[keep]))))
        sigma = max(sigma, 1e-7)
        keep = np.abs(r) <= 3.0 * sigma
    return icpt, slope, sigma


def cut_at_gap(t: np.ndarray) -> int:
    """Index where the usable context starts: just after the last hole (outage, restart)."""
    if len(t) < 3:
        return 0
    d = np.diff(t)
    med = float(np.median(d))
    holes = np.nonzero(d > GAP_FACTOR * max(med, 1e-9))[0]
    return int(holes[-1] + 1) if len(holes) else 0


def prepare(t: np.ndarray, y: np.ndarray) -> Prepared | None:
    """Residual context of measurements ``(t, y)`` (time order), or None when too short."""
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(y)
    t, y = t[ok], y[ok]
    start = cut_at_gap(t)
    t, y = t[start:], y[start:]
    if len(t) < MIN_CONTEXT:
        return None
    icpt, slope, sigma = robust_line(t, y)
    r = y - icpt - slope * (t - t[-1])
    r = np.clip(r, -CLIP_K * sigma, CLIP_K * sigma)
    dt = float(np.median(np.diff(t)))
    return Prepared(float(t[-1]), dt, icpt, slope, sigma, (r * US).astype(np.float32))
