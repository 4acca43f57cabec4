"""Fusion of the classical engine with the forecasters, calibrated online. Pure arithmetic.

Each component's prediction for a measurement's instant is scored against that measurement
when it arrives (the prediction was made before it: no look-ahead). From the last ``window``
scored errors the weights are the minimum-variance combination ``w = Σ⁻¹1 / 1ᵀΣ⁻¹1`` of the
error covariance Σ, restricted to ``w ≥ 0``: with uncorrelated errors that is inverse-variance
weighting, and because every component is scored against the same noisy measurement the shared
measurement noise adds ``c·11ᵀ`` to Σ, which does not change these weights (it would dilute
plain inverse variances towards equal weights). A component that does not help ends with
weight 0; one with fewer than ``min_scored`` errors has weight 0, and all forecasters stay
at 0 unless the combination beats the engine alone significantly on the window (``helps``).

The served bound is never narrower than the engine's: ``engine bound + |fused − engine|``
covers the truth whenever the engine's bound does. On top of it comes ``excess``: how much the
fused error's 95th percentile has exceeded the engine's lately (0 while fusing helps), so a
burst of bad forecasts widens the bound until the weights have moved away from them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from chronotickd.forecast.forecaster import Forecast

ENGINE = "engine"
FUSED = "fused"
COVERAGE = 0.95
SPIKE_K = 5.0  # rows where the engine's error is beyond k robust sigmas are measurement spikes
SIGNIFICANCE_Z = 2.0  # forecasters get weight only if they beat the engine by this many SE


@dataclass(frozen=True, slots=True)
class FusionState:
    """What a query needs, published atomically: forecasts, weights, calibrated spreads."""

    forecasts: Mapping[str, Forecast] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=lambda: {ENGINE: 1.0})
    spread: Mapping[str, float] = field(default_factory=dict)  # q95 |error| per component (s)
    excess: float = 0.0  # added to the bound (s)
    scored: int = 0


def fuse(state: FusionState, base_offset: float, base_bound: float, t: float
         ) -> tuple[float, float]:
    """(offset, bound) at system time ``t`` from the engine's answer and the forecasts."""
    w_e = state.weights.get(ENGINE, 1.0)
    num, den = w_e * base_offset, w_e
    for name, fc in state.forecasts.items():
        w = state.weights.get(name, 0.0)
        if w > 0.0:
            num += w * fc.offset(t, base_offset)
            den += w
    offset = num / den if den > 0.0 else base_offset
    return offset, base_bound + abs(offset - base_offset) + state.excess


def min_variance_weights(errors: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Non-negative weights summing to 1 minimising the variance of the combined error."""
    n, k = errors.shape
    cov = errors.T @ errors / max(n, 1)
    # ridge scaled by how much the components disagree, not by the shared noise
    diff = errors[:, 1:] - errors[:, :1] if k > 1 else errors
    scale = float(np.mean(diff**2)) + 1e-30
    cov = cov + ridge * scale * np.eye(k)
    active = list(range(k))
    w = np.zeros(k)
    while active:
        sub = cov[np.ix_(active, active)]
        try:
            x = np.linalg.solve(sub, np.ones(len(active)))
        except np.linalg.LinAlgError:
            x = np.ones(len(active))
        x = x / x.sum() if x.sum() != 0 else np.ones(len(active)) / len(active)
        if np.all(x >= 0):
            w[:] = 0.0
            w[active] = x
            return w
        active.pop(int(np.argmin(x)))
    w[0] = 1.0
    return w


def helps(errors: np.ndarray, w: np.ndarray, z: float = SIGNIFICANCE_Z) -> bool:
    """Whether the weighted errors beat the engine's (column 0) by more than chance.

    A paired test on squared errors: small weights fitted to noise would cost accuracy, so
    the forecasters get weight only when the window shows a significant gain.
    """
    d = errors[:, 0] ** 2 - (errors @ w) ** 2
    n = len(d)
    return n >= 2 and float(d.mean()) > z * float(d.std(ddof=1)) / np.sqrt(n)


class Calibration:
    """Running record of realized errors per component; turns them into a ``FusionState``."""

    def __init__(self, names: tuple[str, ...], window: int = 256, min_scored: int = 16) -> None:
        self.names = (ENGINE, *[n for n in names if n != ENGINE])
        self.window = window
        self.min_scored = min_scored
        self.rows: deque[tuple[float, ...]] = deque(maxlen=window)  # names + fused; NaN = none

    def score(self, preds: Mapping[str, float | None], measured: float) -> None:
        """Record ``prediction − measurement`` for every component that had a prediction."""
        row = [np.nan if preds.get(n) is None else float(preds[n]) - measured  # type: ignore
               for n in (*self.names, FUSED)]
        if np.isfinite(row[0]):
            self.rows.append(tuple(row))

    def state(self, forecasts: Mapping[str, Forecast]) -> FusionState:
        if not self.rows:
            return FusionState(dict(forecasts))
        e = np.asarray(self.rows)
        eng = e[:, 0]
        sigma = 1.4826 * float(np.median(np.abs(eng - np.median(eng)))) + 1e-9
        clean = e[np.abs(eng - np.median(eng)) <= SPIKE_K * sigma]
        spread = {}
        for j, n in enumerate((*self.names, FUSED)):
            col = e[:, j][np.isfinite(e[:, j])]
            if len(col):
                spread[n] = float(np.quantile(np.abs(col), COVERAGE))
        usable = [0] + [j for j, n in enumerate(self.names) if j > 0 and n in forecasts
                        and np.isfinite(clean[:, j]).sum() >= self.min_scored]
        weights = {n: 0.0 for n in self.names}
        weights[ENGINE] = 1.0
        if len(usable) > 1:
            sub = clean[:, usable]
            sub = sub[np.all(np.isfinite(sub), axis=1)]
            if len(sub) >= self.min_scored:
                w = min_variance_weights(sub)
                if helps(sub, w):
                    for j, wj in zip(usable, w, strict=True):
                        weights[self.names[j]] = float(wj)
        fused_col = e[:, -1]
        both = np.isfinite(fused_col)
        excess = 0.0
        if both.sum() >= self.min_scored:
            excess = max(0.0, float(np.quantile(np.abs(fused_col[both]), COVERAGE)
                                    - np.quantile(np.abs(eng[both]), COVERAGE)))
        return FusionState(dict(forecasts), weights, spread, excess, len(self.rows))
