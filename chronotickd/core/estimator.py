"""Robust offset-and-frequency estimate of one source's measurements (chrony-like).

Pure arithmetic: no I/O, no clock. ``fit_line`` turns a window of measurements into a
``LineFit``: an offset at a reference time, a frequency (slope), their uncertainties and the
systematic error the fit cannot see (path asymmetry, the measurements' own bounds).

Why this shape:
- NTP offset noise is skewed and spiky, so the fit is an iteratively re-weighted (Huber)
  regression whose scale is a weighted MAD, not plain least squares.
- Samples with more queueing delay are worse, so base weights fall with excess delay.
- A frequency that wanders makes old samples misleading; like chrony, a runs test on the
  residual signs drops the oldest samples until the residuals look random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chronotickd.core.measurement import Measurement

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class FitConfig:
    """Knobs of the robust fit; defaults are what the replay bench measured best."""

    noise_floor_s: float = 20e-6  # weight floor: noise that excess delay does not explain
    huber_k: float = 1.5  # residuals beyond k·scale are down-weighted
    reject_k: float = 5.0  # residuals beyond k·scale get zero weight
    min_samples_for_slope: int = 4  # below this the frequency comes from the prior
    runs_test_min: int = 8  # shortest window the runs test may shrink to
    prior_freq_sigma: float = 10e-6  # uncertainty of a prior frequency (10 ppm)
    # Uncertainty of the frequency when there is neither a prior nor enough samples for a
    # slope: a crystal's tolerance (±100 ppm). A slope fitted through 2–3 close samples is
    # noise, and claiming prior_freq_sigma for it let the bound miss the truth (issue 8).
    unknown_freq_sigma: float = 100e-6


@dataclass(frozen=True, slots=True)
class LineFit:
    """``offset(t) = offset_ref + freq · (t − t_ref)`` with its uncertainties.

    ``var_offset`` and ``var_freq`` are the variances of ``offset_ref`` and ``freq``
    (uncorrelated because ``t_ref`` is the weighted mean time). ``systematic`` is the part of
    the error no amount of averaging removes (weighted mean of the samples' own bounds).
    """

    t_ref: float
    offset_ref: float
    freq: float
    var_offset: float
    var_freq: float
    sigma: float
    systematic: float
    n: int
    t_first: float
    t_last: float

    def predict(self, t: float) -> float:
        return self.offset_ref + self.freq * (t - self.t_ref)

    def stddev(self, t: float) -> float:
        """Standard error of ``predict(t)`` (grows quadratically away from ``t_ref``)."""
        dt = t - self.t_ref
        return math.sqrt(self.var_offset + self.var_freq * dt * dt)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    idx = int(np.searchsorted(cw, 0.5 * cw[-1]))
    return float(values[order][min(idx, len(values) - 1)])


def _runs_ok(residuals: np.ndarray) -> bool:
    """Wald–Wolfowitz runs test on residual signs: too few runs means the line is wrong."""
    signs = residuals > 0
    n_pos = int(signs.sum())
    n_neg = len(signs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return len(signs) < 6
    runs = 1 + int(np.count_nonzero(signs[1:] != signs[:-1]))
    n = n_pos + n_neg
    mean = 2.0 * n_pos * n_neg / n + 1.0
    var = (mean - 1.0) * (mean - 2.0) / (n - 1.0)
    return runs >= mean - 2.0 * math.sqrt(max(var, 1e-12))


def _irls(
    t: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    cfg: FitConfig,
    prior_freq: float | None,
) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
    """Huber IRLS of y on t. Returns (t_ref, offset_ref, freq, scale, weights, residuals)."""
    w = w0.copy()
    use_slope = len(t) >= cfg.min_samples_for_slope
    freq = prior_freq or 0.0
    scale = cfg.noise_floor_s
    for _ in range(4):
        sw = w.sum()
        t_ref = float((w * t).sum() / sw)
        dt = t - t_ref
        if use_slope:
            sxx = float((w * dt * dt).sum())
            freq = float((w * dt * (y - (w * y).sum() / sw)).sum() / sxx) if sxx > 0 else freq
        offset_ref = float((w * (y - freq * dt)).sum() / sw)
        res = y - offset_ref - freq * dt
        mad = _weighted_median(np.abs(res), w0)
        scale = max(MAD_TO_SIGMA * mad, cfg.noise_floor_s * 0.1)
        u = np.abs(res) / scale
        robust = np.where(u <= cfg.huber_k, 1.0, cfg.huber_k / np.maximum(u, 1e-12))
        robust[u > cfg.reject_k] = 0.0
        w_new = w0 * robust
        if w_new.sum() <= 0:
            break
        w = w_new
    return t_ref, offset_ref, freq, scale, w, res


def fit_line(
    samples: Sequence[Measurement],
    cfg: FitConfig = FitConfig(),
    prior_freq: float | None = None,
) -> LineFit | None:
    """Robust weighted line through ``samples`` (oldest first); None when there are none."""
    if not samples:
        return None
    t = np.fromiter((m.t for m in samples), float, len(samples))
    y = np.fromiter((m.offset for m in samples), float, len(samples))
    d = np.fromiter((m.delay for m in samples), float, len(samples))
    b = np.fromiter((m.bound for m in samples), float, len(samples))
    excess = (d - d.min()) / 2.0
    w0 = 1.0 / (cfg.noise_floor_s**2 + excess * excess)

    start = 0
    while True:
        tt, yy, ww0 = t[start:], y[start:], w0[start:]
        t_ref, offset_ref, freq, scale, w, res = _irls(tt, yy, ww0, cfg, prior_freq)
        remaining = len(tt)
        if remaining <= cfg.runs_test_min or _runs_ok(res[w > 0]):
            break
        start += max(1, remaining // 4)
        start = min(start, len(t) - cfg.runs_test_min)

    sw = float(w.sum())
    n_eff = sw * sw / float((w * w).sum()) if sw > 0 else 1.0
    dt = tt - t_ref
    sxx = float((w * dt * dt).sum()) / sw if sw > 0 else 0.0
    var_offset = scale * scale / max(n_eff, 1.0)
    if len(tt) >= cfg.min_samples_for_slope and sxx > 0:
        var_freq = scale * scale / (max(n_eff, 1.0) * sxx)
    elif prior_freq is not None:
        var_freq = cfg.prior_freq_sigma**2
    else:
        var_freq = cfg.unknown_freq_sigma**2
    systematic = float((w * b[start:]).sum() / sw) if sw > 0 else float(b[-1])
    return LineFit(
        t_ref=t_ref,
        offset_ref=offset_ref,
        freq=freq,
        var_offset=var_offset,
        var_freq=var_freq,
        sigma=scale,
        systematic=systematic,
        n=len(tt),
        t_first=float(tt[0]),
        t_last=float(t[-1]),
    )
