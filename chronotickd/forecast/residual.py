"""The series a model sees, spikes clipped, in µs: the engine's residuals or a line's.

Each point is ``measured offset − the engine's prediction for that instant``, the prediction
taken from the state the engine published *before* the measurement (what was being served
when it arrived). The model forecasts the next residuals, and its forecast is a *correction*
added to the engine's current answer: it only has to predict what the engine gets wrong
(a lag behind a frequency change, a curvature), not the offset itself. Shared by training
(``train.engine_residuals``) and runtime (``ForecastCore``) so the model sees the same kind of
input in both (docs/forecasting.md).

The other input (``LINE``, that of the shipped ``chronotick-bolt-mini``) is ``offsets − a
robust line over the context`` and the forecast ``line(t) + residual(t)`` (``prepare_line``).
A model directory says which it was trained on in ``chronotick.json`` (``{"input": ...}``;
absent: ``LINE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826
US = 1e6  # the model works in microseconds (float32-friendly, far above InstanceNorm's eps)
CLIP_K = 4.0  # residuals beyond k·sigma of the median are clipped to it (spikes, wrong servers)
GAP_FACTOR = 4.0  # a hole longer than this × the median spacing cuts the context
MIN_CONTEXT = 16
ENGINE_RESIDUAL = "engine-residual"  # measured − the engine's earlier prediction
LINE = "line-residual"  # measured − a robust line over the context


@dataclass(frozen=True, slots=True)
class Prepared:
    """A context ready for the model."""

    t_last: float  # time of the newest measurement
    dt: float  # median spacing: forecast step k is at t_last + k·dt
    sigma: float  # robust scale of the residuals (s)
    context_us: np.ndarray  # clipped residuals in µs, oldest first
    icpt: float = 0.0  # LINE only: line value at t_last (s)
    slope: float = 0.0  # LINE only: s/s

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


def prepare(t: np.ndarray, r: np.ndarray) -> Prepared | None:
    """Context of engine residuals ``r`` at measurement times ``t`` (time order; NaN where
    the engine had no prediction), or None when fewer than ``MIN_CONTEXT`` are usable."""
    t = np.asarray(t, dtype=float)
    r = np.asarray(r, dtype=float)
    ok = np.isfinite(r) & np.isfinite(t)
    t, r = t[ok], r[ok]
    start = cut_at_gap(t)
    t, r = t[start:], r[start:]
    if len(t) < MIN_CONTEXT:
        return None
    med = float(np.median(r))
    sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(r - med))), 1e-7)
    r = np.clip(r, med - CLIP_K * sigma, med + CLIP_K * sigma)
    dt = float(np.median(np.diff(t)))
    return Prepared(float(t[-1]), dt, sigma, (r * US).astype(np.float32))


def prepare_line(t: np.ndarray, y: np.ndarray) -> Prepared | None:
    """``LINE`` context of measured offsets ``y``: ``y − robust line``, clipped at ±4σ."""
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
    return Prepared(float(t[-1]), dt, sigma, (r * US).astype(np.float32), icpt, slope)
