"""The engine's per-source estimation as it was before issue 13 ("engine-v1"), frozen.

A replay method only: the bench compares the shipped engine against it (docs/results.md). It
is a copy of ``chronotickd.core.engine.Track`` at that point (robust line fits over candidate
windows, the one with the best one-poll-ahead error served), so later changes to the engine do
not move this baseline. Do not "fix" it; it is the yardstick.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np

from chronotickd.core.engine import EngineConfig
from chronotickd.core.estimator import LineFit, fast_median, fit_arrays, fit_line
from chronotickd.core.measurement import Measurement
from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S


class Track:
    """Measurements of one source and their current fit.

    Two things the replay bench showed matter (docs/replay.md):

    - *Window length.* A long window averages noise, a short one follows a wandering
      frequency; which wins depends on the clock and the poll. The track keeps a fit per
      candidate length and scores each by how well it predicted the next accepted measurement
      (an exponentially weighted mean square, errors clipped so one bad sample cannot decide).
      It serves the best-scoring fit. Only past data decide: each score is updated with a
      measurement the fit had not seen.
    - *Step or recurring outliers?* A few consecutive agreeing outliers mean a step only if
      outliers are rare. On a path where a fifth of the replies take another route, three in a
      row happen every few hundred polls, so the confirmation count grows with the observed
      outlier rate until a false step is unlikely (``step_false_rate``).
    """

    def __init__(self, name: str, kind: str, cfg: EngineConfig) -> None:
        self.name = name
        self.kind = kind
        self.cfg = cfg
        self.samples: deque[Measurement] = deque(maxlen=cfg.max_samples)
        self.history: deque[Measurement] = deque(maxlen=cfg.history_samples)
        self.pending: list[Measurement] = []
        self.fit: LineFit | None = None  # what is served (``base_fit``, widened while in doubt)
        self.base_fit: LineFit | None = None  # the fit itself
        self.prior_freq: float | None = None
        self.last: Measurement | None = None
        self.steps = 0
        self.step_times: list[float] = []  # first measurement after each step (for ``at``)
        self.outliers = 0
        self.outlier_rate = 0.0  # EWMA of isolated-outlier verdicts (a step's don't count)
        self.run = 0  # length of the current run of outliers
        self.windows = sorted({min(w, cfg.max_samples) for w in cfg.candidate_windows}
                              | {cfg.max_samples})
        self.cand_fits: dict[int, LineFit | None] = {}
        self.cand_score: dict[int, float] = {}
        self.window = self.windows[-1]
        self._gap = 0.0

    def _threshold(self, fit: LineFit, m: Measurement) -> float:
        spread = math.hypot(fit.stddev(m.t), fit.sigma)
        drift = self.cfg.max_drift_ppm * 1e-6 * max(0.0, m.t - fit.t_last)
        return max(self.cfg.outlier_k * spread, self.cfg.outlier_floor_s) + drift

    def step_confirm(self) -> int:
        """Agreeing consecutive outliers needed to call a step at the current outlier rate."""
        need = self.cfg.step_confirm
        r = self.outlier_rate
        if 0.0 < r < 1.0:
            need = max(need, math.ceil(math.log(self.cfg.step_false_rate) / math.log(r)))
        return min(need, max(self.cfg.step_confirm, self.cfg.step_confirm_max))

    def _note(self, outlier: bool) -> None:
        """Count a resolved verdict in the outlier rate (counted once a run is resolved, so a
        real step's own outliers do not delay its confirmation)."""
        a = self.cfg.window_score_alpha
        self.outlier_rate += a * ((1.0 if outlier else 0.0) - self.outlier_rate)

    def add(self, m: Measurement) -> str:
        """Take one measurement; returns ``accepted``, ``outlier`` or ``step``."""
        self.last = m
        fit = self.base_fit
        if fit is not None and len(self.samples) >= self.cfg.min_samples:
            residual = m.offset - fit.predict(m.t)
            if abs(residual) > self._threshold(fit, m):
                self.pending.append(m)
                need = self.step_confirm()
                self.run += 1
                if len(self.pending) >= need and self._fit_was_wrong(need):
                    return "accepted"
                if len(self.pending) < need or not self._pending_agree(fit, need):
                    self.pending = self.pending[-need:]
                    self.outliers += 1
                    self.fit = self._in_doubt(fit)
                    return "outlier"
                self.prior_freq = fit.freq
                confirmed = self.pending[-need:]  # not an older lone spike
                self.samples.clear()
                self.samples.extend(confirmed)
                self.history.extend(confirmed)
                self.pending.clear()
                self.steps += 1
                self.step_times.append(confirmed[0].t)
                self.run = 0
                self.cand_score.clear()
                self._refit()
                return "step"
        self.pending.clear()
        for _ in range(self.run):  # the run ended without a step: isolated outliers
            self._note(True)
        self.run = 0
        self._note(False)
        self._score(m)
        self.samples.append(m)
        self.history.append(m)
        self._refit()
        return "accepted"

    def _score(self, m: Measurement) -> None:
        """Update each candidate's prediction score with a measurement it has not seen."""
        a = self.cfg.window_score_alpha
        for w, f in self.cand_fits.items():
            if f is None:
                continue
            err = m.offset - f.predict(m.t)
            cap = self.cfg.fit.reject_k * max(f.sigma, self.cfg.fit.noise_floor_s)
            e2 = min(err * err, cap * cap)
            old = self.cand_score.get(w)
            self.cand_score[w] = e2 if old is None else old + a * (e2 - old)

    def _refit(self) -> None:
        samples = self.samples
        n = len(samples)
        t = np.fromiter((m.t for m in samples), float, n)
        y = np.fromiter((m.offset for m in samples), float, n)
        d = np.fromiter((m.delay for m in samples), float, n)
        b = np.fromiter((m.bound for m in samples), float, n)
        self._gap = fast_median(np.diff(t)) if n >= 2 else 0.0
        fits: dict[int, LineFit | None] = {}
        full: LineFit | None = None
        for w in self.windows:
            if w >= n:  # every candidate this long sees all samples: one fit for them all
                if full is None:
                    full = fit_arrays(t, y, d, b, self.cfg.fit, self.prior_freq, False)
                fits[w] = full
            else:
                fits[w] = fit_arrays(t[-w:], y[-w:], d[-w:], b[-w:], self.cfg.fit,
                                     self.prior_freq, False)
        self.cand_fits = fits
        scored = {w: s for w, s in self.cand_score.items() if fits.get(w) is not None}
        if scored:
            best = min(scored.values())
            # ties (within 2 %) go to the longest window: same accuracy, less variance
            self.window = max(w for w, s in scored.items() if s <= best * 1.02)
        else:
            self.window = self.windows[-1]
        self.base_fit = self.fit = fits[self.window]

    def _in_doubt(self, fit: LineFit) -> LineFit:
        """The fit to serve while a run of outliers is unresolved.

        A pending measurement whose own interval excludes the fitted line contradicts it, and
        until more data decide (isolated outlier or step) either may be right: the served
        bound is widened to hold that measurement's interval too. Delay spikes, whose wide
        interval still holds the line, widen nothing.
        """
        worst = 0.0
        for p in self.pending:
            r = abs(p.offset - fit.predict(p.t))
            if r > p.bound:
                worst = max(worst, r + p.bound)
        if worst <= fit.systematic:
            return fit
        return dataclasses.replace(fit, systematic=worst)

    def _fit_was_wrong(self, need: int) -> bool:
        """A run of outliers that a robust fit over window + run accepts was not made of
        outliers: the fit was (e.g. a young track seeded by a bad first sample). Take them."""
        run = self.pending[-need:]
        joint = fit_line([*self.samples, *run], self.cfg.fit, self.prior_freq, runs_test=False)
        if joint is None or any(abs(p.offset - joint.predict(p.t)) > self._threshold(joint, p)
                                for p in run):
            return False
        self.samples.extend(run)
        self.history.extend(run)
        self.pending.clear()
        self.run = 0
        self._refit()
        return True

    def _pending_agree(self, fit: LineFit, need: int) -> bool:
        """Do the pending outliers describe one new offset (a step) rather than noise?"""
        res = [p.offset - fit.predict(p.t) for p in self.pending[-need:]]
        if not (all(r > 0 for r in res) or all(r < 0 for r in res)):
            return False
        spread = max(res) - min(res)
        return spread < 0.5 * min(abs(r) for r in res) + 2 * self.cfg.outlier_floor_s

    def usable(self) -> bool:
        return self.fit is not None and len(self.samples) >= self.cfg.min_samples

    def typical_gap(self) -> float:
        """Median spacing of the window's samples (cached at each refit)."""
        return self._gap


class EngineV1Method:
    """Replay method: the frozen track, answered with the engine's bound formula (systematic
    + k·stddev + drift·age, pending outliers covered, as ``Engine.snapshot`` did)."""

    name = "engine-v1"

    def __init__(self, cfg: EngineConfig | None = None) -> None:
        self.cfg = cfg or EngineConfig()
        self.track = Track("ntp", "ntp", self.cfg)
        self.last_verdict = ""

    def observe(self, m: Measurement) -> None:
        self.last_verdict = self.track.add(m)

    def answer(self, t: float) -> tuple[float, float]:
        tr = self.track
        fit = tr.fit
        if fit is None or not tr.usable():
            return 0.0, KERNEL_UNSYNC_MAXERROR_S
        sys_ = fit.systematic
        if tr.pending:
            sys_ = max(sys_, max(abs(p.offset - fit.predict(p.t)) + p.bound for p in tr.pending))
        age = max(0.0, t - fit.t_last)
        bound = (sys_ + self.cfg.confidence_k * fit.bound_stddev(t)
                 + self.cfg.max_drift_ppm * 1e-6 * age)
        return fit.predict(t), bound
