"""Robust offset-and-frequency estimate of one source's measurements (chrony-like).

Pure arithmetic: no I/O, no clock. ``fit_line`` turns a window of measurements into a
``LineFit``: an offset at a reference time, a frequency (slope), their uncertainties and the
systematic error the fit cannot see (path asymmetry, the measurements' own bounds).

Why this shape (each point measured on the replay bench, docs/replay.md):
- NTP offset noise is skewed and spiky, so the fit is an iteratively re-weighted (Huber)
  regression whose scale is a weighted MAD, not plain least squares. It starts from a
  Theil–Sen slope and a weighted-median intercept, so a minority of wrong samples (a second
  network path, a burst of spikes) cannot drag the first iteration and then survive it.
- Samples with more queueing delay are worse, so base weights fall with the delay *above the
  window's median delay*. Not above the minimum: when the path is bimodal (a minority of
  replies on a different route) the minimum belongs to the minority, whose offset the
  majority contradicts, and trusting it makes the estimate jump between routes. For the
  same reason a short window's median is not let sink below the track's typical delay (the
  median of all its samples, ``typical_delay``): eight polls can hold as many minority
  replies as majority ones by chance, and then the majority would be judged queued. And a
  reply faster than that typical delay by more than the delays' spread explains came by the
  other route: it weighs as one queued by the difference (``delay_weights``), so the
  estimate follows one route, the typical one, whatever the windows hold.
- A frequency that wanders makes old samples misleading; like chrony, a runs test on the
  residual signs can drop the oldest samples until the residuals look random (the engine
  instead chooses among several window lengths by their prediction error, see engine.Track).
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
    min_samples_for_slope: int = 4  # below this the frequency comes from a known prior
    runs_test_min: int = 8  # shortest window the runs test may shrink to
    prior_freq_sigma: float = 10e-6  # uncertainty of a prior frequency (10 ppm)
    # Uncertainty of the frequency when there is neither a prior nor enough samples for a
    # slope: a crystal's tolerance (±100 ppm). A slope fitted through 2–3 close samples is
    # noise, and claiming prior_freq_sigma for it let the bound miss the truth (issue 8).
    unknown_freq_sigma: float = 100e-6
    # Below this many samples a fitted slope's uncertainty is also taken from the samples'
    # own bounds, not only from their scatter: two or three samples that happen to agree
    # give a tiny scatter while one honest but delayed reply (its bound ±1 ms) tilts the
    # line by ms per second. The clock rig caught it under CPU load: a 1800 ppm slope
    # served with a bound growing 150 µs/s (docs/rig.md). Past it the scatter is trusted.
    hard_slope_below: int = 8
    hard_slope_z: float = 3.0  # the served bound's multiplier (EngineConfig.confidence_k)
    # A slope fitted (without a prior) from fewer samples than this claims no less than
    # prior_freq_sigma either: four to seven points on a curving offset (thermal wander at
    # 1024 s polls) fit a line well and extrapolate it badly (issue 13: the bound missed 5 %
    # of the truth there). 0 keeps the floor at the 2–3 samples above.
    young_fit_samples: int = 8
    # A young fit's slope (fewer than hard_slope_below samples, no prior) is shrunk towards
    # the guess (``fit_arrays``' ``freq_guess``) by as much as its samples cannot tell it,
    # each sample's error taken as half its delay above the window's fastest reply (what
    # queueing can do to an offset; the noise floor below that). The prior is this spread
    # of a free-running clock's frequency. Two samples fix a line whatever their weights: a
    # second reply queued by 21 ms (offset 10 ms off) made a 2 ppm clock a 42 ppm one for
    # the 256 s to the next poll (held-out ``spikes-heavy``, docs/heldout.md). Only the
    # uncertainty queueing adds counts: clean samples are not touched, however close.
    # 0 turns it off (``EngineConfig.v1``).
    young_slope_prior_sigma: float = 10e-6
    # Judge each residual against the larger of one sample's noise and the line's own
    # uncertainty at that sample's time (``_spread``): a sample far from the others in time
    # is not set aside for disagreeing with a line the others cannot pin down. False: the
    # residual alone (the estimator before issue 13's last round, ``EngineConfig.v1``).
    leverage_aware: bool = True
    # A window's reference delay never sinks below the track's typical delay (``fit_arrays``'
    # ``typical_delay``, ``delay_weights``). False: the window's median alone (the estimator
    # before, ``EngineConfig.v1``).
    typical_delay_floor: bool = True
    # A reply faster than the track's typical delay by more than route_k × its delays' spread
    # came by another route and weighs as one queued by the difference (``delay_weights``).
    # 0 turns it off (``EngineConfig.v1``).
    route_k: float = 3.0


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
    # variances the served bound uses (None: the fit's own); wider with few samples
    serve_var_offset: float | None = None
    serve_var_freq: float | None = None

    def predict(self, t: float) -> float:
        return self.offset_ref + self.freq * (t - self.t_ref)

    def stddev(self, t: float) -> float:
        """Standard error of ``predict(t)`` (grows quadratically away from ``t_ref``)."""
        dt = t - self.t_ref
        return math.sqrt(self.var_offset + self.var_freq * dt * dt)

    def bound_stddev(self, t: float) -> float:
        """``stddev(t)`` widened for what few samples cannot know (Student's t); the served
        bound uses this, outlier tests the plain ``stddev``."""
        vo = self.var_offset if self.serve_var_offset is None else self.serve_var_offset
        vf = self.var_freq if self.serve_var_freq is None else self.serve_var_freq
        dt = t - self.t_ref
        return math.sqrt(vo + vf * dt * dt)


def fast_median(a: np.ndarray) -> float:
    """Median of a non-empty 1-D array without ``np.median``'s overhead (hot in the fit)."""
    n = len(a)
    k = n // 2
    if n % 2:
        return float(np.partition(a, k)[k])
    p = np.partition(a, (k - 1, k))
    return 0.5 * float(p[k - 1] + p[k])


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the weight lies."""
    return _weighted_median(values, weights)


def delay_weights(d: np.ndarray, cfg: FitConfig, typical_delay: float = 0.0,
                  delay_spread: float = math.inf) -> np.ndarray:
    """Base weights of samples with delays ``d``: falling with the delay in excess of the
    window's median (not its minimum: see the module docstring), or of ``typical_delay``
    where that is larger.

    Why one-sided: a reply faster than typical is never penalized (its excess is 0), so
    lowering the reference only ever judges more of the typical replies queued. That is what
    a window does when the minority route's replies happen to fill it: on the real trace at
    150 s and 180 s polls the estimate then followed the minority for hours (0.15 and
    0.31 ms, coverage 0.990 and 0.994; with the floor 0.04 and 0.22 ms, coverage 1.000).
    A window whose replies all queued more than typical (a congested stretch) keeps its own
    median: against the quiet path's delay its replies would all be judged queued alike,
    and the held-out noisy path lost half its accuracy to that (a track-wide reference in
    place of the window's: 1.98 × at 64 s).

    A reply *faster* than ``typical_delay`` by more than ``cfg.route_k`` × ``delay_spread``
    (the track's delays' robust σ, at least the noise floor) came by another route: its
    offset may differ from the typical route's by half the difference (the extra delay is
    one-way), so it weighs as a reply queued by as much beyond that allowance. Within it a
    faster reply keeps its full weight: on a path with one route the fastest replies are the
    least queued. Why: the estimate follows the typical route (the reference is a median),
    and a minority route's replies, each within its own honest interval, tilted every window
    they filled: the real trace at 180 s polls 0.218 → 0.036 ms, 100 s 0.042 → 0.019 ms
    when this rule was added (docs/replay.md)."""
    ref = max(fast_median(d), typical_delay) if cfg.typical_delay_floor else fast_median(d)
    excess = np.maximum(d - ref, 0.0) / 2.0
    if cfg.route_k > 0.0 and typical_delay > 0.0 and math.isfinite(delay_spread):
        allowance = cfg.route_k * max(delay_spread, cfg.noise_floor_s)
        excess = np.maximum(excess, np.maximum(typical_delay - allowance - d, 0.0) / 2.0)
    return 1.0 / (cfg.noise_floor_s**2 + excess * excess)


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


_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _theil_sen(t: np.ndarray, y: np.ndarray) -> float:
    """Median of pairwise slopes: a starting slope that ignores up to ~29 % bad samples."""
    n = len(t)
    pairs = _PAIRS.get(n)
    if pairs is None:
        if n <= 96:  # all pairs
            pairs = np.triu_indices(n, 1)
        else:  # long windows: each sample with the one half a window later, O(n)
            i = np.arange(n - n // 2)
            pairs = (i, i + n // 2)
        if len(_PAIRS) < 256:
            _PAIRS[n] = pairs
    i, j = pairs
    dt = t[j] - t[i]
    ok = dt > 0
    if not ok.any():
        return 0.0
    return fast_median((y[j] - y[i])[ok] / dt[ok])


def small_sample_inflation(dof: float, z: float = 3.0) -> float:
    """(t_dof / z)²: how much a variance estimated from ``dof`` degrees of freedom must grow
    for ``z`` standard errors to keep their Gaussian coverage (Cornish–Fisher expansion of
    Student's t quantile; dof is floored at 1, where the expansion undershoots)."""
    v = max(dof, 1.0)
    g1 = (z**3 + z) / 4.0
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
    t = z + g1 / v + g2 / v**2 + g3 / v**3
    return (t / z) ** 2


def _spread(t: np.ndarray, w: np.ndarray, t_ref: float, use_slope: bool,
            w_typ: float) -> np.ndarray:
    """How much wider than one sample's noise a residual may be at each sample's time.

    The line fitted with weights ``w`` is itself uncertain there (its offset, and its slope
    times the distance from the weighted centre: the sample's leverage). A sample far from
    the others in time (the first after a burst, after an outage, the newest of a young fit)
    is judged against the larger of one sample's noise and the line's own prediction error
    there, not against the spread of the clustered samples alone (studentized residuals).
    Judged by the residual alone, the one sample that could tell the slope was the one set
    aside: four burst samples 2 s apart and two more outvoted the sample 2 minutes later, and
    the young fit served a slope that put it 266 µs off. Where the line is better known than
    a sample (evenly spread samples: leverage under 1) nothing changes, so a long window
    rejects outliers at its ends as before. In units of a typical sample (``w_typ``)."""
    sw = float(w.sum())
    if sw <= 0 or w_typ <= 0:
        return np.ones(len(t))
    lever = w_typ / sw
    if use_slope:
        dt = t - t_ref
        sxx = float(w.dot(dt * dt))
        if sxx > 0:
            lever = lever + w_typ * dt * dt / sxx
    return np.sqrt(np.maximum(1.0, lever))


def _shrink_young_slope(t: np.ndarray, d: np.ndarray, freq: float, guess: float,
                        cfg: FitConfig) -> float:
    """The young fit's slope ``freq`` moved towards ``guess`` by how much *queueing* leaves
    it unknown (``FitConfig.young_slope_prior_sigma``): a normal prior around the guess, and
    the slope's variance from each sample's error σ_i = max(noise floor, (delay_i − fastest
    delay)/2), less what the noise floor alone would give (clean samples' slope noise is
    the young fit's own floors' business: shrinking it too cost the clock rig's first
    seconds at 0.5 s bursts 4.6 → 7.5 µs). Bayes' posterior mean of the two."""
    sig = np.maximum(cfg.noise_floor_s, (d - float(d.min())) / 2.0)
    wq = 1.0 / (sig * sig)
    tq = float(wq.dot(t)) / float(wq.sum())
    sxx = float(wq.dot((t - tq) ** 2))
    if sxx <= 0:
        return guess
    # the same samples, every one at the noise floor (sxx > 0 makes this positive too)
    clean = float(((t - t.mean()) ** 2).sum()) / cfg.noise_floor_s**2
    extra = 1.0 / sxx - 1.0 / clean
    if extra <= 0:
        return freq
    prior = cfg.young_slope_prior_sigma**2
    return guess + (freq - guess) * prior / (prior + extra)


def _irls(
    t: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    cfg: FitConfig,
    prior_freq: float | None,
    freq_guess: float = 0.0,
) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
    """Huber IRLS of y on t. Returns (t_ref, offset_ref, freq, scale, weights, residuals)."""
    # with a known prior (restored drift, the pre-step fit) a slope needs a few samples;
    # without one, any slope beats none (fit_arrays reports its uncertainty honestly)
    use_slope = len(t) >= cfg.min_samples_for_slope or prior_freq is None
    freq = prior_freq if prior_freq is not None else freq_guess
    if use_slope and len(t) >= 2:  # two samples: their own slope (the only pair)
        freq = _theil_sen(t, y)
    # robust start: weighted-median intercept, MAD scale, robust weights from those residuals
    t_ref = float((w0 * t).sum() / w0.sum())
    res = y - freq * (t - t_ref)
    res = res - _weighted_median(res, w0)
    scale = max(MAD_TO_SIGMA * _weighted_median(np.abs(res), w0), cfg.noise_floor_s * 0.1)
    w_typ = float(np.median(w0)) if cfg.leverage_aware else 0.0  # 0: no leverage term
    u = np.abs(res) / (scale * _spread(t, w0, t_ref, use_slope, w_typ))
    w = w0 * np.where(u <= cfg.huber_k, 1.0, cfg.huber_k / np.maximum(u, 1e-12))
    w[u > cfg.reject_k] = 0.0
    # a robust pass that leaves fewer than two samples judged them with a scale only one of
    # them set: not a fit. Keep the delay weights alone (before, only an empty pass fell back)
    if np.count_nonzero(w) < min(2, len(w)):
        w = w0.copy()
    for _ in range(4):
        sw = float(w.sum())
        t_ref = float(w.dot(t)) / sw
        dt = t - t_ref
        # a slope needs two samples with weight: through one, sxx is the rounding error of
        # t_ref (times are large: 6e4 s into the trace, 1e9 s of CLOCK_REALTIME) and the
        # "slope" was 2e7 s/s. The fallbacks above and below keep two whenever there are
        # two; this covers a single sample, whose robust start's slope stays
        if use_slope and np.count_nonzero(w) >= 2:
            wdt = w * dt
            sxx = float(wdt.dot(dt))
            freq = float(wdt.dot(y)) / sxx if sxx > 0 else freq
        offset_ref = float(w.dot(y - freq * dt)) / sw
        res = y - offset_ref - freq * dt
        ares = np.abs(res)
        scale = max(MAD_TO_SIGMA * _weighted_median(ares, w0), cfg.noise_floor_s * 0.1)
        u = ares / (scale * _spread(t, w, t_ref, use_slope, w_typ))
        robust = np.minimum(1.0, cfg.huber_k / np.maximum(u, 1e-12))
        robust[u > cfg.reject_k] = 0.0
        w_new = w0 * robust
        if np.count_nonzero(w_new) < min(2, len(w_new)):
            break
        done = bool(np.abs(w_new - w).max() <= 1e-2 * float(w.max()))
        w = w_new
        if done:  # weights settled: another pass would give the same line
            break
    return t_ref, offset_ref, freq, scale, w, res


def fit_line(
    samples: Sequence[Measurement],
    cfg: FitConfig = FitConfig(),
    prior_freq: float | None = None,
    runs_test: bool = True,
) -> LineFit | None:
    """Robust weighted line through ``samples`` (oldest first); None when there are none.

    ``runs_test=False`` keeps the whole window (the caller chooses the window length).
    """
    if not samples:
        return None
    n = len(samples)
    t = np.fromiter((m.t for m in samples), float, n)
    y = np.fromiter((m.offset for m in samples), float, n)
    d = np.fromiter((m.delay for m in samples), float, n)
    b = np.fromiter((m.bound for m in samples), float, n)
    return fit_arrays(t, y, d, b, cfg, prior_freq, runs_test)


def fit_arrays(
    t: np.ndarray,
    y: np.ndarray,
    d: np.ndarray,
    b: np.ndarray,
    cfg: FitConfig = FitConfig(),
    prior_freq: float | None = None,
    runs_test: bool = True,
    freq_guess: float = 0.0,
    typical_delay: float = 0.0,
    delay_spread: float = math.inf,
) -> LineFit | None:
    """``fit_line`` on arrays of times, offsets, delays and bounds (oldest first).

    ``freq_guess``: the frequency served while the samples cannot tell one (a single sample,
    or a slope the samples' bounds leave wider than a crystal's tolerance) and no prior is
    known; the uncertainty served is the unknown-frequency one all the same. The engine
    passes the rate at which another daemon moves the system clock (0 where none does):
    until measured otherwise, the system clock's rate is the best guess, as every plain NTP
    client assumes. ``typical_delay``, ``delay_spread``: the track's typical delay, below
    which the window's own median is not taken as the reference of excess delay, and its
    spread, beyond which a faster reply came by another route (``delay_weights``)."""
    if len(t) == 0:
        return None
    w0 = delay_weights(d, cfg, typical_delay, delay_spread)

    start = 0
    while True:
        tt, yy, ww0 = t[start:], y[start:], w0[start:]
        t_ref, offset_ref, freq, scale, w, res = _irls(tt, yy, ww0, cfg, prior_freq,
                                                        freq_guess)
        remaining = len(tt)
        if not runs_test or remaining <= cfg.runs_test_min or _runs_ok(res[w > 0]):
            break
        start += max(1, remaining // 4)
        start = min(start, len(t) - cfg.runs_test_min)

    sw = float(w.sum())
    n_eff = sw * sw / float((w * w).sum()) if sw > 0 else 1.0
    dt = tt - t_ref
    sxx = float((w * dt * dt).sum()) / sw if sw > 0 else 0.0
    var_offset = scale * scale / max(n_eff, 1.0)
    if len(tt) >= cfg.min_samples_for_slope and sxx > 0:  # _irls keeps two weighted samples
        var_freq = scale * scale / (max(n_eff, 1.0) * sxx)
    else:
        var_freq = cfg.prior_freq_sigma**2
    # What the served bound uses. Few samples leave the scale itself uncertain: widen like
    # Student's t. A slope fitted from 2–3 samples without a prior gets its own (inflated)
    # error, never the prior's 10 ppm, which would claim knowledge nobody has.
    fitted_slope = len(tt) < cfg.min_samples_for_slope and prior_freq is None
    inflate = small_sample_inflation(n_eff - (2.0 if fitted_slope or len(tt) >= 4 else 1.0))
    if fitted_slope:
        data_var = scale * scale / (max(n_eff, 1.0) * sxx) if sxx > 0 else 0.0
        serve_var_freq = (max(inflate * data_var, cfg.prior_freq_sigma**2) if len(tt) >= 3
                          else cfg.unknown_freq_sigma**2)
    else:
        serve_var_freq = inflate * var_freq
    if prior_freq is None and len(tt) < cfg.young_fit_samples:
        serve_var_freq = max(serve_var_freq, cfg.prior_freq_sigma**2)
    systematic = float((w * b[start:]).sum() / sw) if sw > 0 else float(b[-1])
    use_slope = len(tt) >= cfg.min_samples_for_slope or prior_freq is None
    if use_slope and len(tt) < cfg.hard_slope_below and sxx > 0:
        # The slope is Σ c_i·y_i with c_i = w_i·dt_i / Σ w·dt²: honest samples (|error_i| ≤
        # bound_i) leave it at most Σ |c_i|·bound_i wrong. The served bound must cover that.
        hard = float(np.abs(w * dt).dot(b[start:])) / (sxx * sw)
        if prior_freq is None and hard > cfg.hard_slope_z * cfg.unknown_freq_sigma:
            # the samples say less about the slope than a crystal's tolerance does: serve
            # frequency 0 ± that tolerance (the 2-sample rule of issue 8), not their tilt
            # (0 against the system clock's rate: ``freq_guess``)
            freq = freq_guess
            offset_ref = float(w.dot(yy - freq_guess * (tt - t_ref))) / sw
            hard_var = cfg.unknown_freq_sigma**2
        else:
            hard_var = (hard / cfg.hard_slope_z) ** 2
        var_freq = max(var_freq, hard_var)
        serve_var_freq = max(serve_var_freq, hard_var)
        if prior_freq is None and cfg.young_slope_prior_sigma > 0 and freq != freq_guess:
            shrunk = _shrink_young_slope(tt, d[start:], freq, freq_guess, cfg)
            if shrunk != freq:
                # the served bound still covers the samples' own slope: what the shrink
                # moved it by is added to the frequency's uncertainty, never taken off
                moved = (freq - shrunk) ** 2
                freq = shrunk
                offset_ref = float(w.dot(yy - freq * (tt - t_ref))) / sw
                var_freq += moved
                serve_var_freq += moved
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
        serve_var_offset=inflate * var_offset,
        serve_var_freq=serve_var_freq,
    )
