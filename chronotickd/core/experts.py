"""Online aggregation of simple estimators ("experts") of one track's offset. Pure arithmetic.

Why: no single estimator is best on every clock. A long robust line wins where the frequency
is steady, a short one where it wanders, a parabola's tangent where the frequency itself
moves steadily (thermal wander: a line through the window lags it by half the span), a
median of the last few samples where the host is already disciplined (no learnable drift,
noise that reverts to the mean), the last sample right after a change, zero where another
daemon keeps the clock on time. Which one applies is not known in advance and changes with
time, so the track keeps all of them and weighs each by how well it *predicted* measurements
it had not seen yet:

- After every accepted measurement each expert proposes a line
  ``offset(t) = level + freq·(t − t_anchor)``. When the next accepted measurement arrives,
  each expert's error there is its loss: the horizon is the real poll gap, the longest age a
  query sees before the next refit, so experts are judged where their errors are largest.
- The weights are exponentially weighted, like a Bayesian posterior over "which expert is
  right": ``w ∝ exp(−η Σ e²/s²)`` where s is the predictive spread (the combined estimate's
  realized error, plus the sample's own excess delay). Large errors (in those units) decide
  fast, errors the noise hides decide slowly; the first ``warmup`` scores only measure the
  spread, and the track's robust lines serve meanwhile. Each loss is clipped at ``clip_k``
  spreads (one bad sample cannot decide), old losses fade (``discount``), and a *fixed share*
  of the mass is spread evenly after each update, so an expert that was bad for hours regains
  weight within a few polls when the regime changes (Herbster & Warmuth's tracking of the best
  expert: the loss stays close to the best expert's of each period). Experts under
  ``keep_ratio`` of the leader's weight are left out of the combination itself.
- The combination is a line (so queries stay arithmetic on published state): its level is
  the weighted mean of the experts' levels; its frequency the weighted mean of the
  frequencies the experts *fit* (the robust lines, least squares, Theil–Sen, the de-sloped
  median's), so a line that predicts better also steers the slope answers between polls and
  a silent source ride on. Not the levels' (they carry the system clock's rate by
  definition, not an estimate of it) and not the parabola's: its tangent at the window's end
  is its least determined part (at 256 s polls it cost 3–9 % in wander, outage and mixed).
  Before, the selected robust line's slope alone: 1.12 × Theil–Sen on the held-out noisy
  path at 64 s, now 1.04 ×, and `wander` at 256 s 0.72 ×. Weighting each vote also by how
  well its window pins a slope (the sum of squared time deviations) let the longest windows
  outvote the rest, and under wander their slope lags: `outage` at 16 s on seeds 101–103
  was then 1.08 × Theil–Sen, 1.03 × without.

The combination never narrows the promise: ``widen`` returns the track's robust fit moved to
the combined line, its bound grown by the distance between the two lines (wherever the robust
fit's interval held the truth, the combined one does too), then grown further where the
combined estimate's own realized errors at the poll horizon exceeded the bounds served before
them (``Aggregator.calibration``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from chronotickd.core.estimator import LineFit, fast_median, weighted_median

# (kind, k): "zero" = the system clock as it is (right where another daemon already keeps it
# on time), "hold" = the last sample, "median" = median of the last k (these three are levels
# of the system clock's offset: ``Aggregator.propose``), "median-slope" =
# median level of the last k after removing the longest robust fit's slope, "linear" = least
# squares line over the last k, "theil-sen" = Theil–Sen line over the last k, "quadratic" =
# the tangent at the newest sample of a delay-weighted least squares parabola through the last
# k (the frequency's own drift; only the level is combined, ``propose``). The track's own
# robust fits (one per candidate window) are experts too (``line-W``).
DEFAULT_EXPERTS: tuple[tuple[str, int], ...] = (
    ("zero", 0),
    ("hold", 1),
    ("median", 4),
    ("median", 8),
    ("median", 16),
    ("median", 32),
    ("median-slope", 8),
    ("median-slope", 16),
    # the newest slope: where the frequency walks (random walk, thermal wander seen at long
    # polls) a line through hours of polls extrapolates a slope hours old (matrix, 256 s:
    # wander 0.35 x, random-walk 0.71 x, outage 0.68 x without it)
    ("linear", 4),
    ("linear", 16),
    ("theil-sen", 16),
    ("theil-sen", 32),
    ("quadratic", 16),
    ("quadratic", 32),
)


@dataclass(frozen=True, slots=True)
class ExpertConfig:
    """Knobs of the aggregation (fixed; docs/results.md shows what they give)."""

    experts: tuple[tuple[str, int], ...] = DEFAULT_EXPERTS
    # learning rate on squared errors in units of the predictive spread; 0.5 would be the
    # Gaussian likelihood if the spread were the noise alone, but it is the combined
    # estimate's realized error (prediction error included, so larger): twice that rate
    eta: float = 1.0
    discount: float = 1.0 / 64.0  # each scored poll, old losses fade by this share
    share: float = 0.01  # fixed share: mass spread evenly after each update
    clip_k: float = 6.0  # per-poll loss clipped at clip_k² (errors beyond clip_k noise scales)
    calib_window: int = 256  # realized misses remembered for the calibration term
    calib_quantile: float = 0.99  # the share of realized misses the extra width covers
    # head start (in loss units) of the track's own robust lines before anything is scored:
    # the classical estimate is served until the others earn their weight
    prior_loss: float = 3.0
    # experts below this share of the leader's weight are left out of the combination: the
    # fixed share keeps them learnable, but their floor of mass must not bias the estimate
    # (an expert 0.4 s off at 1/1000 of the mass moves it by 400 µs)
    keep_ratio: float = 0.05
    warmup: int = 8  # scores before the realized spread alone judges the errors


Line = tuple[float, float, float]  # (t_anchor, level, freq)
# the expert kinds that fit a frequency the combined line's is averaged from (``propose``)
FREQ_EXPERTS = frozenset({"median-slope", "linear", "theil-sen"})


def at(line: Line, t: float) -> float:
    """The line's offset at ``t``."""
    return line[1] + line[2] * (t - line[0])


def theil_sen_line(t: np.ndarray, y: np.ndarray) -> Line:
    """Median of pairwise slopes, median intercept, anchored at the newest sample."""
    n = len(t)
    if n < 3:
        return (float(t[-1]), float(y[-1]), 0.0)
    i, j = _pairs(n)
    dt = t[j] - t[i]
    ok = dt > 0
    freq = fast_median((y[j] - y[i])[ok] / dt[ok]) if ok.any() else 0.0
    t0 = float(t[-1])
    return (t0, fast_median(y - freq * (t - t0)), freq)


def linear_line(t: np.ndarray, y: np.ndarray) -> Line:
    """Least squares line (the mean below 3 samples), anchored at the newest sample."""
    t0 = float(t[-1])
    if len(t) < 3:
        return (t0, float(y.mean()), 0.0)
    dt = t - t.mean()
    sxx = float(dt.dot(dt))
    freq = float(dt.dot(y)) / sxx if sxx > 0 else 0.0
    return (t0, float(y.mean()) + freq * (t0 - float(t.mean())), freq)


def quadratic_line(t: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Line | None:
    """Weighted least squares parabola through the window, as its tangent at the newest
    sample: where the frequency itself moves (thermal wander), a line through the window
    lags it by half the window's span; the parabola's tangent does not. None below 6
    samples (three coefficients need more than a handful of points to be any better)."""
    n = len(t)
    if n < 6:
        return None
    t0 = float(t[-1])
    x = (t - t0) / max(float(t0 - t[0]), 1e-9)  # scaled to [-1, 0]: a well conditioned fit
    a = np.column_stack((np.ones(n), x, x * x))
    sw = np.ones(n) if w is None else np.sqrt(np.maximum(w, 0.0))
    coef, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
    return (t0, float(coef[0]), float(coef[1]) / max(float(t0 - t[0]), 1e-9))


def _median(y: np.ndarray, w: np.ndarray | None) -> float:
    return fast_median(y) if w is None else weighted_median(y, w)


_PAIR_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    p = _PAIR_CACHE.get(n)
    if p is None:
        p = _PAIR_CACHE[n] = np.triu_indices(n, 1)
    return p


class Aggregator:
    """Weights, losses and the combined line of one track's experts."""

    def __init__(self, cfg: ExpertConfig, line_names: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.names: list[str] = [*line_names, *(f"{k}-{n}" if n > 1 else k
                                                for k, n in cfg.experts)]
        self.n_lines = len(line_names)
        # which experts' frequencies the combined line's is the weighted mean of (``propose``)
        self.fits_freq = np.array([True] * self.n_lines
                                  + [k in FREQ_EXPERTS for k, _ in cfg.experts])
        self.misses: deque[float] = deque(maxlen=cfg.calib_window)  # error / bound ratios
        self._calib, self._calib_n = 1.0, 0
        self.reset()

    def reset(self) -> None:
        """Forget what was learned (a step of the clock: a new regime)."""
        n = len(self.names)
        self.loss = np.full(n, self.cfg.prior_loss)
        self.loss[: self.n_lines] = 0.0
        self.weights = self._normalize(self.loss)
        self.lines: list[Line | None] = [None] * n
        self.combined: Line | None = None
        self.scored = 0
        self.var = 0.0  # EWMA of the combined estimate's squared prediction error (s²)
        self.disciplined = False

    def note_disciplined(self) -> None:
        """Another daemon visibly steers the system clock: the ``zero`` expert ("it is
        right") gets as much weight as the robust lines together, during the warm-up and
        after it, until losses are scored. That daemon has a reference of its own; until
        this track's measurements show they do better, not making its clock worse is the
        prior (with 22 polls at 1024 s over 6 h, 141 µs of path noise could not tell a line
        from it). The bound is unaffected: the combination never narrows it (``widen``)."""
        if self.disciplined or "zero" not in self.names:
            return
        self.disciplined = True
        i = self.names.index("zero")
        # as much weight as the robust lines together (they are one hypothesis, "the
        # oscillator is a line", fitted over several windows): a head start of ln(n_lines)/η
        # over the best of them, which fades as losses are scored (``discount``)
        lead = math.log(max(1, self.n_lines)) / self.cfg.eta
        self.loss[i] = min(self.loss[i], float(self.loss[: max(1, self.n_lines)].min()) - lead)
        self.weights = self._normalize(self.loss)

    def _normalize(self, loss: np.ndarray) -> np.ndarray:
        w = np.exp(-self.cfg.eta * (loss - loss.min()))
        w /= w.sum()
        return (1.0 - self.cfg.share) * w + self.cfg.share / len(w)

    # -- learning ------------------------------------------------------------------------
    def score(self, t: float, y: float, scale: float, excess: float = 0.0) -> None:
        """A new accepted measurement ``(t, y)`` the current lines have not seen.

        Errors are judged against the predictive spread: the combined estimate's own realized
        squared error (EWMA), at least a quarter of ``scale``² (the fit's noise), plus
        ``excess`` (s), this measurement's own extra uncertainty (half its delay above the
        typical), so a sample that queued long decides less. The first ``warmup`` scores
        only start that spread: a few samples (with no outlier test yet) must not hand the
        estimate to an expert that got lucky on them; the robust lines serve meanwhile."""
        cfg = self.cfg
        seen = [i for i, ln in enumerate(self.lines) if ln is not None]
        if not seen or self.combined is None:
            return
        self.scored += 1
        floor = max(scale, 1e-9) ** 2
        e = y - at(self.combined, t)
        if self.scored <= cfg.warmup:
            self.var = max(self.var, floor) if self.scored < cfg.warmup else max(e * e, floor)
            return
        s = math.sqrt(max(self.var, 0.25 * floor) + excess * excess)
        if excess <= 0.0:  # the spread of an unqueued sample: queued ones add excess² to it
            self.var += cfg.discount * (min(e * e, cfg.clip_k * cfg.clip_k * s * s) - self.var)
        loss = np.empty(len(self.lines))
        for i, ln in enumerate(self.lines):
            if ln is not None:
                e = (y - at(ln, t)) / s
                loss[i] = min(e * e, cfg.clip_k * cfg.clip_k)
        # an expert with no prediction yet is charged the mean of the others'
        missing = [i for i, ln in enumerate(self.lines) if ln is None]
        if missing:
            loss[missing] = loss[seen].mean()
        self.loss = (1.0 - cfg.discount) * self.loss + loss
        self.weights = self._normalize(self.loss)

    def note_miss(self, error: float, bound: float) -> None:
        """A new measurement's distance (s) from the prediction served before it, and that
        prediction's bound there. The measurement's noise makes the distance an over-estimate
        of the truth's: conservative."""
        if bound > 0:
            self.misses.append(abs(error) / bound)
            self._calib_n = -1  # stale (the deque's length may not change once full)

    def calibration(self) -> float:
        """How much the served bound must grow (a factor ≥ 1) to cover the combined estimate's
        own realized errors: the ``calib_quantile`` of realized error / bound served (with few
        polls, the largest seen). As a ratio, errors made while the bound was honestly wide
        (the first samples) do not inflate it later."""
        if not self.misses:
            return 1.0
        n = len(self.misses)
        if n != self._calib_n:  # a new ratio since the last call: recompute (hot in replay)
            a = np.fromiter(self.misses, float, n)
            k = min(n - 1, math.ceil(self.cfg.calib_quantile * (n - 1)))  # the higher one
            self._calib = max(1.0, float(np.partition(a, k)[k]))
            self._calib_n = n
        return self._calib

    # -- proposing -----------------------------------------------------------------------
    def propose(self, fits: list[LineFit | None], t: np.ndarray, y: np.ndarray,
                slope: float, w0: np.ndarray | None = None, dl: np.ndarray | None = None,
                rate: float = 0.0, since: int | None = None) -> Line | None:
        """Refresh every expert's line from the window (oldest first) and return the
        weighted combination. ``fits`` are the track's robust candidate fits in
        ``line_names`` order; ``slope`` is the longest fit's frequency (de-sloped levels);
        ``w0`` the samples' delay weights (``estimator.delay_weights``): the medians are
        weighted by them as the robust fit is, since a reply that queued longer is off by
        more (and, on an asymmetric path, off in one direction).

        ``y`` are offsets against the oscillator (θ, the time base); ``dl`` is δ = REALTIME −
        RAW − epoch at each sample and ``rate`` δ's current rate. The level experts (zero,
        hold, median) are levels *of the system clock's offset* ``y − δ``, carried forward
        at the system clock's rate: "the system clock keeps its offset" is what they mean,
        and on a host another daemon disciplines that is the right reading (its oscillator
        drifts, its REALTIME does not). Where nobody moves REALTIME (δ constant, rate 0)
        they are plain levels of θ. ``since``: how many of the newest samples were taken
        on the newest one's system clock, after REALTIME last jumped before it (a step or a
        fast slew, ``RealtimeMap.last_jump_raw``); a median of the system clock's offsets
        takes only those, since before the jump it was another clock (mixing them put a fleet
        host stepped by 2 s 142 ms off for a poll)."""
        n = len(t)
        if n == 0:
            return None
        t_last = float(t[-1])
        if dl is None:
            dl = np.zeros(n)
        d_last = float(dl[-1])
        sys_y = y - dl  # the system clock's offsets
        lines = self.lines
        for i, f in enumerate(fits):
            lines[i] = None if f is None else (f.t_ref, f.offset_ref, f.freq)
        i = self.n_lines
        for kind, k in self.cfg.experts:
            tk, yk = t[-k:], y[-k:]
            wk = None if w0 is None else w0[-k:]
            if kind == "zero":
                lines[i] = (t_last, d_last, rate)
            elif kind == "hold":
                lines[i] = (t_last, float(y[-1]), rate)
            elif kind == "median":
                kk = k if since is None else max(1, min(k, since))
                lines[i] = (t_last, _median(sys_y[-kk:], None if w0 is None else w0[-kk:])
                            + d_last, rate)
            elif kind == "median-slope":
                lines[i] = (t_last, _median(yk - slope * (tk - t_last), wk), slope)
            elif kind == "linear":
                lines[i] = linear_line(tk, yk)
            elif kind == "theil-sen":
                lines[i] = theil_sen_line(tk, yk)
            elif kind == "quadratic":
                lines[i] = quadratic_line(tk, yk, wk)
            else:
                raise ValueError(f"unknown expert kind {kind!r}")
            i += 1
        w = self.weights
        if self.scored <= self.cfg.warmup and self.n_lines:  # nothing learned yet: the
            w = np.zeros(len(lines))                         # robust lines alone
            w[: self.n_lines] = 1.0
            if self.disciplined:  # ... and the system clock as it is, as much as they
                w[self.names.index("zero")] = float(self.n_lines)
        keep = self.cfg.keep_ratio * float(max(w[j] for j, ln in enumerate(lines)
                                               if ln is not None))
        ws = level = every = 0.0
        fws = freq = 0.0
        for j, ln in enumerate(lines):
            if ln is None or w[j] < keep:
                continue
            ws += w[j]
            level += w[j] * at(ln, t_last)
            every += w[j] * ln[2]
            if self.fits_freq[j]:
                fws += w[j]
                freq += w[j] * ln[2]
        if fws <= 0.0:  # no fitted slope is kept: the selected robust line's, else all of theirs
            sel = lines[0] if self.n_lines and lines[0] is not None else None
            freq, fws = (sel[2], 1.0) if sel is not None else (every, ws)
        self.combined = (t_last, level / ws, freq / fws)
        return self.combined

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` heaviest experts and their weights (for status and the bench)."""
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
    d_off = at(line, t_ref) - base.offset_ref
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


def shrink_to_system_clock(line: Line, fit: LineFit, d_last: float, gap: float,
                           system_rate: float | None = None, young_n: int = 0) -> Line:
    """On a host another daemon keeps on time, move the combined line towards that daemon's
    clock by as much as the measurements cannot tell them apart: its level, and its
    frequency towards the rate that daemon steers REALTIME at (``system_rate``).

    Empirical Bayes: the system clock's offset the line claims, D, is judged against the
    robust fit's own standard error σ one poll ahead; the level served is the system
    clock's plus D·D²/(D² + σ²). Where the line is sure (σ ≪ |D|) nothing changes; where
    |D| is inside its noise (a young fit at 1024 s polls: 3–8 samples with 141 µs of path
    noise, slopes off by 0.05 ppm) the answer stays near a clock that was right, instead of
    following a line that got lucky. The frequency is judged the same way, its difference S
    from the system rate against the fit's frequency variance: what is left of S is
    S·S²/(S² + var_freq). Why both: between polls the answer is the line less REALTIME's
    own course, so a level put back on the clock with a slope 0.2 ppm off it walks 200 µs
    away over a 1024 s poll (the disciplined host's first hour at 1024 s was 2.4 × the
    clock's own error with the level alone). A fit of fewer than ``young_n`` samples is
    judged with σ no smaller than its samples' own intervals allow: one sample with 1 ms of
    delay cannot tell a 100 µs offset, whatever scale its lone residual suggests. Never
    narrows the bound (``widen`` grows it by the distance moved). The engine applies it
    where ``Aggregator.disciplined``."""
    t_last = line[0]
    d = at(line, t_last) - d_last
    sigma = fit.stddev(fit.t_last + gap)
    if fit.n < young_n:
        # a scale from a handful of residuals claims more than those samples know: no less
        # than their own intervals (half-width ``systematic``, ~uniform: /√3) averaged
        sigma = max(sigma, fit.systematic / math.sqrt(3.0 * max(fit.n, 1)))
    if d == 0.0 or sigma <= 0.0:
        return line
    keep = d * d / (d * d + sigma * sigma)
    freq = line[2]
    if system_rate is not None and fit.var_freq > 0.0:
        s = freq - system_rate
        freq = system_rate + s * (s * s / (s * s + fit.var_freq))
    return (t_last, d_last + d * keep, freq)
