"""Online aggregation of simple estimators ("experts") of one track's offset. Pure arithmetic.

Why: no single estimator is best on every clock. A long robust line wins where the frequency
is steady, a short one where it wanders, a median of the last few samples where the host is
already disciplined (no learnable drift, mean-reverting noise) or the path is asymmetric, the
last sample right after a change. Which one applies is not known in advance and changes with
time, so the track keeps all of them and weighs each by how well it *predicted* measurements
it had not seen yet:

- Each expert proposes a line ``offset(t) = level + freq·(t − t_anchor)`` after every
  accepted measurement. When the next accepted measurement arrives, every expert's error at
  that instant is its loss (horizon = the actual poll gap, the longest age a query sees
  before the next refit), squared, clipped at ``clip_k`` noise scales so one bad sample
  cannot decide, and divided by the noise scale so the weights do not depend on units.
- Weights are exponentially weighted averages of discounted losses (``exp(−η·L)``) with a
  *fixed share* mixed in after every update: each expert keeps at least ``share/N`` of the
  mass, so one that was bad for hours regains weight within a few polls when the regime
  changes (a step, a new thermal phase). This is the classic tracking-the-best-expert
  forecaster (Herbster & Warmuth); its loss stays close to that of the best expert of each
  period.
- The combination is the weighted mean of the experts' lines (itself a line, so queries stay
  arithmetic on published state).

The combination never narrows the promise: ``widen`` returns the track's robust fit moved to
the combined line with its bound grown by the distance between the two lines (so wherever the
robust fit's interval held the truth, the combined one does too), plus a calibration term
from the combined estimate's own realized misses.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from chronotickd.core.estimator import LineFit, fast_median

# (name, kind, k): kind "line" = a robust-fit candidate window (given by the track),
# "median"/"trim" = level of the last k samples, "hold" = the last sample,
# "median-slope" = level of the last k samples after removing the long fit's slope,
# "theil-sen" = Theil–Sen line over the last k samples, "zero" = the system clock as it is
# (right where another daemon already keeps it on time: its offset averages zero).
DEFAULT_EXPERTS: tuple[tuple[str, int], ...] = (
    ("zero", 0),
    ("hold", 1),
    ("median", 4),
    ("median", 8),
    ("median", 16),
    ("median", 64),
    ("trim", 16),
    ("median-slope", 8),
    ("median-slope", 16),
    ("theil-sen", 32),
)


@dataclass(frozen=True, slots=True)
class ExpertConfig:
    """Knobs of the aggregation (config section ``clock``: fixed, see docs/design.md)."""

    experts: tuple[tuple[str, int], ...] = DEFAULT_EXPERTS
    eta: float = 1.0  # learning rate on losses in units of noise variance
    discount: float = 1.0 / 48.0  # each poll, old losses fade by this share
    share: float = 0.02  # fixed share: mass spread evenly after each update
    clip_k: float = 6.0  # losses clipped at (clip_k · noise scale)²
    calib_window: int = 128  # realized misses remembered for the calibration term
    # experts below this share of the leader's weight are left out of the combination (the
    # fixed share keeps them learnable, but a bad expert's few percent must not bias it)
    keep_ratio: float = 0.3
    prior_loss: float = 4.0  # head start of the robust lines (see Aggregator.__init__)


Line = tuple[float, float, float]  # (t_anchor, level, freq)


def _at(line: Line, t: float) -> float:
    return line[1] + line[2] * (t - line[0])


def theil_sen_line(t: np.ndarray, y: np.ndarray) -> Line:
    n = len(t)
    if n < 3:
        return (float(t[-1]), float(y[-1]), 0.0)
    i, j = np.triu_indices(n, 1)
    dt = t[j] - t[i]
    ok = dt > 0
    freq = fast_median((y[j] - y[i])[ok] / dt[ok]) if ok.any() else 0.0
    t0 = float(t[-1])
    return (t0, fast_median(y - freq * (t - t0)), freq)


class Aggregator:
    """Weights, losses and the combined line of one track's experts."""

    def __init__(self, cfg: ExpertConfig, line_names: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.names: list[str] = [*line_names, *(f"{k}-{n}" if n > 1 else k
                                                for k, n in cfg.experts)]
        self.n_lines = len(line_names)
        n = len(self.names)
        # prior: a clock has a frequency error until the levels earn their weight, so the
        # robust lines start ahead by ``prior_loss``
        self.loss = np.full(n, cfg.prior_loss)
        self.loss[: self.n_lines] = 0.0
        w = np.exp(-cfg.eta * self.loss)
        self.weights = w / w.sum()
        self.lines: list[Line | None] = [None] * n
        self.misses: deque[float] = deque(maxlen=cfg.calib_window)
        self.prev_served: tuple[LineFit, float] | None = None  # (served fit, its bound k)

    # -- learning ------------------------------------------------------------------------
    def score(self, t: float, y: float, scale: float) -> None:
        """A new accepted measurement ``(t, y)`` the current lines have not seen.

        Losses are squared errors relative to ``scale² + (best expert's error)²``: in noise
        they compare to the noise, where the prediction error dominates (long polls, a
        wandering clock) they compare to the best prediction, so a clip at ``clip_k`` still
        tells a bad expert from a good one."""
        cfg = self.cfg
        seen = np.array([ln is not None for ln in self.lines])
        if not seen.any():
            return
        err = np.array([y - _at(ln, t) if ln is not None else 0.0 for ln in self.lines])
        e2 = err * err
        s2 = max(scale, 1e-9) ** 2 + float(e2[seen].min())
        loss = np.minimum(e2 / s2, cfg.clip_k * cfg.clip_k)
        # an expert with no prediction yet is charged the mean of the others'
        loss[~seen] = loss[seen].mean()
        self.loss = (1.0 - cfg.discount) * self.loss + loss
        z = -cfg.eta * (self.loss - self.loss.min())
        w = np.exp(z)
        w /= w.sum()
        n = len(w)
        self.weights = (1.0 - cfg.share) * w + cfg.share / n

    def note_miss(self, excess: float) -> None:
        """How far (s) a measurement's own interval lay outside the served bound (≤ 0: not)."""
        self.misses.append(excess)

    def calibration(self) -> float:
        """Extra half-width (s) the served bound needs: the 99th percentile of realized misses
        (a miss is certain, not estimated: the measurement's own interval excluded the
        served one), 0 while misses are rarer than 1 %."""
        if not self.misses:
            return 0.0
        a = np.fromiter(self.misses, float, len(self.misses))
        pos = a[a > 0]
        if len(pos) * 100 <= len(a):
            return 0.0
        return float(np.quantile(a, 0.99)) if len(pos) else 0.0

    # -- proposing -----------------------------------------------------------------------
    def propose(self, fits: list[LineFit | None], t: np.ndarray, y: np.ndarray,
                slope: float) -> Line | None:
        """Refresh every expert's line from the window (oldest first) and return the
        weighted combination. ``fits`` are the track's robust candidate fits in
        ``line_names`` order; ``slope`` is the long fit's frequency for the de-sloped levels."""
        n = len(t)
        if n == 0:
            return None
        t_last = float(t[-1])
        lines = self.lines
        for i, f in enumerate(fits):
            lines[i] = None if f is None else (f.t_ref, f.offset_ref, f.freq)
        i = self.n_lines
        for kind, k in self.cfg.experts:
            tk, yk = t[-k:], y[-k:]
            if kind == "zero":
                lines[i] = (t_last, 0.0, 0.0)
            elif kind == "hold":
                lines[i] = (t_last, float(y[-1]), 0.0)
            elif kind == "median":
                lines[i] = (t_last, fast_median(yk), 0.0)
            elif kind == "trim":
                m = len(yk)
                cut = m // 4
                lines[i] = (t_last, float(np.sort(yk)[cut:m - cut].mean()), 0.0)
            elif kind == "median-slope":
                lines[i] = (t_last, fast_median(yk - slope * (tk - t_last)), slope)
            elif kind == "theil-sen":
                lines[i] = theil_sen_line(tk, yk)
            else:
                raise ValueError(f"unknown expert kind {kind!r}")
            i += 1
        w = self.weights
        top = float(max(w[j] for j, ln in enumerate(lines) if ln is not None))
        live = [j for j, ln in enumerate(lines)
                if ln is not None and w[j] >= self.cfg.keep_ratio * top]
        ws = float(sum(w[j] for j in live))
        level = sum(w[j] * _at(lines[j], t_last) for j in live) / ws  # type: ignore[arg-type]
        freq = sum(w[j] * lines[j][2] for j in live) / ws  # type: ignore[index]
        return (t_last, level, freq)

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.weights)[:n]
        return [(self.names[i], float(self.weights[i])) for i in order]


def widen(base: LineFit, line: Line, confidence_k: float, extra: float = 0.0) -> LineFit:
    """``base`` re-centred on ``line`` with a bound that holds wherever ``base``'s did.

    With d(t) = line(t) − base(t) = Δo + Δf·(t − t_ref): the served bound
    ``systematic + k·sqrt(vo + vf·dt²)`` must be at least base's bound + |d(t)| for every t.
    |Δo| goes into the systematic part; Δf into the variances via
    (a + b)² ≤ (1 + λ)a² + (1 + 1/λ)b², λ chosen where it is tight for large dt.
    """
    t_ref = base.t_ref
    d_off = _at(line, t_ref) - base.offset_ref
    d_freq = line[2] - base.freq
    vo = base.var_offset if base.serve_var_offset is None else base.serve_var_offset
    vf = base.var_freq if base.serve_var_freq is None else base.serve_var_freq
    if d_freq != 0.0 and confidence_k > 0:
        b = abs(d_freq) / confidence_k
        lam = min(1.0, max(0.05, b / math.sqrt(vf))) if vf > 0 else 1.0
        vo = (1.0 + lam) * vo
        vf = (1.0 + lam) * vf + (1.0 + 1.0 / lam) * b * b
    return replace(base, offset_ref=base.offset_ref + d_off, freq=line[2],
                   systematic=base.systematic + abs(d_off) + max(0.0, extra),
                   serve_var_offset=vo, serve_var_freq=vf)
