"""The estimation engine: measurements in, immutable ``ClockState`` out. Pure: time is passed in.

One ``Track`` per source (the NTP source after its own per-round falseticker selection, each
PTP port, ...). Each track keeps a window of measurements, rejects isolated outliers, detects
steps (several consecutive measurements that agree with each other but not with the fit) and
refits. ``Engine.snapshot(now)`` picks the best usable track (smallest bound now, with
hysteresis so it does not flap) and freezes everything a query needs.

Time base: every ``t`` here is CLOCK_MONOTONIC_RAW (raw) seconds and every offset θ =
reference − (raw + epoch), leap-free (chronotickd/core/timebase.py, core/leap.py). Steps and
slews of CLOCK_REALTIME never reach the fit: ``observe_clock`` records δ = REALTIME − RAW −
epoch in a ``RealtimeMap`` (for answers and ``at``) and counts its unexplained changes.

The daemon and the replay bench drive this same class; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from chronotickd.core.crosscheck import Disagreement, Estimate, cross_check
from chronotickd.core.estimator import (
    MAD_TO_SIGMA,
    FitConfig,
    LineFit,
    delay_weights,
    fast_median,
    fit_arrays,
    fit_line,
)
from chronotickd.core.experts import (
    Aggregator,
    ExpertConfig,
    shrink_to_system_clock,
    widen,
)
from chronotickd.core.leap import Leap, leap_seconds, next_midnight
from chronotickd.core.measurement import Measurement
from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S, ClockState, TrackSummary
from chronotickd.core.timebase import ClockReading, RealtimeMap, as_reading

# the newest accepted samples whose intervals the served bound must hold (``_in_doubt``)
CONTRADICTION_MEMORY = 4
TURN_RECENT = 4  # accepted samples whose course a turning clock's outliers must continue
# a system clock rate beyond this is a slew in progress, not a frequency (``_system_rate``)
SYSTEM_RATE_MAX = 50e-6
# δ moving faster than this: another daemon disciplines the system clock (nobody: exactly 0)
DISCIPLINED_RATE = 10e-9
DISCIPLINED_CHECK_SAMPLES = 8  # ... whose clock must agree with this many newest samples
# samples before the spread of a track's delays is known well enough to tell another route
ROUTE_MIN_SAMPLES = 8
# samples before the longest window's noise scale is taken as the path's (``Track.path_noise``)
PATH_NOISE_MIN_SAMPLES = 8
GUESS_REFIT_S = 0.1e-6  # a young track is refitted when the system rate moved by this
LEAP_GUARD_S = 2.0  # measurements this close to a leap instant are not fitted (which side?)
LEAP_CONFIRM = 3  # measurements after a leap that show it was not applied → it was not


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine knobs (config section ``clock``); see docs/design.md for why these defaults."""

    fit: FitConfig = field(default_factory=FitConfig)
    max_samples: int = 64  # fit window (chrony's maximum too)
    history_samples: int = 2048  # kept for retrospective ``at`` queries
    min_samples: int = 3  # consistent measurements before status is synchronized
    step_confirm: int = 3  # consecutive agreeing outliers that mean "the clock stepped"
    confidence_k: float = 3.0  # multiplier on the fit's standard error
    max_drift_ppm: float = 1.0  # frequency change allowed between measurements
    restore_drift_ppm: float = 50.0  # growth of a bound restored from disk (unknown history)
    stale_after_s: float = 64.0  # minimum age before status turns freerunning
    void_after_s: float = 3600.0  # age past which the estimate is no longer served
    switch_ratio: float = 1.5  # a new source must be this much tighter to take over
    outlier_k: float = 5.0  # residual (in fit standard deviations) that makes an outlier
    outlier_floor_s: float = 100e-6  # ... and never less than this
    # A window shorter than this many samples is judged with at least the longest window's
    # noise scale in the outlier test (``Track._threshold``). 0: its own scale alone (the
    # engine before issue 13, ``EngineConfig.v1``).
    outlier_scale_below: int = 16
    # window lengths (samples) the track chooses among by their one-poll-ahead prediction
    # error; capped by max_samples (see Track)
    candidate_windows: tuple[int, ...] = (8, 16, 32, 64)
    window_score_alpha: float = 1.0 / 16.0  # EWMA weight of each new prediction error
    step_false_rate: float = 1e-4  # tolerated chance that a run of outliers is not a step
    step_confirm_max: int = 8  # never wait for more agreeing outliers than this
    failover_floor_s: float = 10.0  # silence (s) before selection moves on, at least
    # -- issue 13 (``v1()`` switches all of these off) --
    # online aggregation of experts (core/experts.py); None serves the best robust fit alone
    experts: ExpertConfig | None = field(default_factory=ExpertConfig)
    # at polls this far apart or more, two agreeing outliers confirm a step (see
    # Track.step_confirm); None keeps ``step_confirm`` at every poll interval
    step_long_gap_s: float | None = 256.0
    # before ``min_samples`` a track's fit is still the best estimate there is: serve it with
    # its own (wide) bound, status unsynchronized, instead of the uncorrected clock
    serve_collecting: bool = True
    # the estimate is void after ``void_after_s`` or this many typical poll gaps, whichever
    # is longer (at 1024 s polls one hour is three missed replies); None: ``void_after_s``
    void_after_polls: float | None = 6.0
    # past the void the answer is unsynchronized with the kernel's unsynchronised bound;
    # True: its midpoint is the last line extrapolated (holdover) unless another daemon was
    # seen keeping the system clock on time (then the system clock, ``Track.keeps_system_clock``)
    holdover: bool = True

    @classmethod
    def v1(cls) -> EngineConfig:
        """The engine as it was before issue 13 (replay baseline ``engine-v1``)."""
        return cls(experts=None, step_long_gap_s=None, serve_collecting=False,
                   void_after_polls=None, outlier_scale_below=0, holdover=False,
                   fit=FitConfig(young_fit_samples=0, leverage_aware=False,
                                 young_slope_prior_sigma=0.0, typical_delay_floor=False,
                                 route_k=0.0))


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
        # the frequency served while the samples cannot tell one (``fit_arrays``): the
        # system clock's rate against the oscillator, set by the engine at each measurement
        self.freq_guess = 0.0
        # the engine's δ history (set by the engine at each measurement): the level experts
        # are levels of the system clock's offset, θ − δ
        self.realtime = RealtimeMap()
        # another daemon steers REALTIME and its clock agreed with the newest measurements at
        # the last refit: past the void, the system clock is the better guess (ClockState)
        self.keeps_system_clock = False
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
        self.served: LineFit | None = None  # the experts' combination (or ``base_fit``)
        self.agg: Aggregator | None = (
            Aggregator(cfg.experts, ("selected", *(f"line-{w}" for w in self.windows)))
            if cfg.experts is not None else None)
        self.last_residual = 0.0  # last measurement − served prediction (the poll policy's)
        self.last_scale = 0.0  # the noise scale that residual is judged against
        self.last_delay = 0.0  # median delay of all samples: the track's typical delay

    def _threshold(self, fit: LineFit, m: Measurement) -> float:
        """How far from ``fit`` a measurement may fall before it is an outlier.

        A short window's own noise scale is not trusted below the longest window's: the
        path's noise is the same for both, and a scale from 8 samples whose delay weights
        sit on one or two of them can be a few µs. Against that, every reply of a path with
        2 ms of queueing was an outlier: the estimate was locked out for 50 minutes and
        drifted 4 ms on its slope (held-out ``disc-internet`` at 100 s polls: 607 µs against
        206 µs for no correction at all; now 162 µs)."""
        sigma = fit.sigma
        path = self.path_noise()
        if fit.n < self.cfg.outlier_scale_below and path is not None:
            sigma = max(sigma, path)
        spread = math.hypot(fit.stddev(m.t), sigma)
        drift = self.cfg.max_drift_ppm * 1e-6 * max(0.0, m.t - fit.t_last)
        return max(self.cfg.outlier_k * spread, self.cfg.outlier_floor_s) + drift

    def path_noise(self) -> float | None:
        """The path's noise scale: the longest window's, once it holds
        ``PATH_NOISE_MIN_SAMPLES`` (None before). Shorter windows follow the clock better,
        but their own scale rests on fewer samples."""
        longest = self.cand_fits.get(self.windows[-1])
        if longest is None or longest.n < PATH_NOISE_MIN_SAMPLES:
            return None
        return longest.sigma

    def step_confirm(self) -> int:
        """Agreeing consecutive outliers needed to call a step at the current outlier rate."""
        need = self.cfg.step_confirm
        long_gap = self.cfg.step_long_gap_s
        if long_gap is not None and self._gap >= long_gap:
            # waiting costs (need − 1) polls of wrong answers, at long polls most of the error
            # budget, while a false step needs two wrong offsets that agree with each other
            need = min(need, 2)
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
        served = self.served
        if served is not None:
            self.last_residual = m.offset - served.predict(m.t)
            excess = max(0.0, m.delay - self.last_delay) / 2.0 if self.last_delay else 0.0
            self.last_scale = math.hypot(max(served.sigma, self.cfg.fit.noise_floor_s), excess)
        if fit is not None and len(self.samples) >= self.cfg.min_samples:
            residual = m.offset - fit.predict(m.t)
            if abs(residual) > self._threshold(fit, m):
                self.pending.append(m)
                need = self.step_confirm()
                self.run += 1
                if len(self.pending) >= need and self._fit_was_wrong(need):
                    return "accepted"
                if self._clock_turned(fit):
                    return "accepted"
                if len(self.pending) < need or not self._pending_agree(fit, need):
                    self.pending = self.pending[-need:]
                    self.outliers += 1
                    self.fit = self._in_doubt(served if served is not None else fit)
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
                if self.agg is not None:
                    self.agg.reset()
                self._refit()
                return "step"
        if self.pending and fit is not None and self._ambiguous(fit, m):
            pass  # consistent with the run too: it neither ends it nor joins it
        else:
            self.pending.clear()
            for _ in range(self.run):  # the run ended without a step: isolated outliers
                self._note(True)
            self.run = 0
        self._note(False)
        self._score(m)
        if self.agg is not None and served is not None:
            self._learn(m, served)
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

    def refit(self) -> None:
        """Fit again (the engine changed ``freq_guess``)."""
        if self.samples:
            self._refit()

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
        # the typical delay: a new sample is judged against it, and no window's reference of
        # excess delay sinks below it; past its spread a faster reply came by another route
        # (``estimator.delay_weights``; unknown below 8 samples)
        typical = fast_median(d)
        spread = (MAD_TO_SIGMA * fast_median(np.abs(d - typical))
                  if n >= ROUTE_MIN_SAMPLES else math.inf)
        for w in self.windows:
            if w >= n:  # every candidate this long sees all samples: one fit for them all
                if full is None:
                    full = fit_arrays(t, y, d, b, self.cfg.fit, self.prior_freq, False,
                                      self.freq_guess, typical, spread)
                fits[w] = full
            else:
                fits[w] = fit_arrays(t[-w:], y[-w:], d[-w:], b[-w:], self.cfg.fit,
                                     self.prior_freq, False, self.freq_guess, typical,
                                     spread)
        self.cand_fits = fits
        scored = {w: s for w, s in self.cand_score.items() if fits.get(w) is not None}
        if scored:
            best = min(scored.values())
            # ties (within 2 %) go to the longest window: same accuracy, less variance
            self.window = max(w for w, s in scored.items() if s <= best * 1.02)
        else:
            self.window = self.windows[-1]
        self.base_fit = self.fit = self.served = fits[self.window]
        self.last_delay = typical
        agg = self.agg
        dl = (self.realtime.deltas_at(t)
              if (agg is not None or self.cfg.holdover) and self.realtime.points else None)
        # another daemon steers REALTIME; does its clock agree with these measurements (the
        # median system-clock offset of the newest ones within their typical half-delay)?
        # One 50 ms off does not (rig scenario a: favouring it there widened the served bound
        # tenfold for minutes).
        self.keeps_system_clock = False
        if dl is not None and abs(self.freq_guess) > DISCIPLINED_RATE:
            k = min(n, DISCIPLINED_CHECK_SAMPLES)
            self.keeps_system_clock = bool(abs(fast_median((y - dl)[-k:]))
                                           <= fast_median(b[-k:]))
        if agg is not None and self.keeps_system_clock and not agg.disciplined:
            # then it is the experts' prior, from the first sample on: at 1024 s polls waiting
            # for three left the first 2048 s to a line through one or two samples (2.4 × the
            # clock's own error in the first hour); a clock wrongly believed loses its weight
            # to the measurements' losses and its shrink to their standard error as samples
            # come.
            agg.note_disciplined()
        if agg is not None and self.fit is not None:
            longest = fits[self.windows[-1]]
            # "selected": the window the prediction scores chose (the engine before issue 13)
            # the newest sample's system clock began at the last jump before it (a jump
            # after it changes nothing: each sample's offset is read with its own δ)
            jump = self.realtime.last_jump_raw(before=float(t[-1]))
            line = agg.propose([fits[self.window], *(fits[w] for w in self.windows)], t, y,
                               longest.freq if longest is not None else 0.0,
                               delay_weights(d, self.cfg.fit, typical, spread), dl,
                               self.freq_guess,
                               since=n - int(np.searchsorted(t, jump, side="right"))
                               if jump is not None else n)
            gap = max(self._gap, 1.0)
            if line is not None and agg.disciplined and dl is not None:
                line = shrink_to_system_clock(line, self.fit, float(dl[-1]), gap, self.freq_guess,
                                              self.cfg.fit.young_fit_samples)
            if line is not None:
                moved = widen(self.fit, line, self.cfg.confidence_k)
                at_gap = (moved.systematic + self.cfg.confidence_k
                          * moved.bound_stddev(moved.t_last + gap)
                          + self.cfg.max_drift_ppm * 1e-6 * gap)
                extra = (agg.calibration() - 1.0) * at_gap
                self.fit = self.served = (replace(moved, systematic=moved.systematic + extra)
                                          if extra > 0 else moved)
        if self.fit is not None and self.cfg.experts is not None:
            self.fit = self.served = self._in_doubt(self.fit)

    def _learn(self, m: Measurement, served: LineFit) -> None:
        """Score the experts on an accepted measurement they have not seen, and note by how
        much it fell outside the bound served before it (the calibration term)."""
        agg = self.agg
        assert agg is not None
        path = self.path_noise()
        noise = path if path is not None else served.sigma
        agg.score(m.t, m.offset, max(noise, self.cfg.fit.noise_floor_s),
                  max(0.0, m.delay - self.last_delay) / 2.0)
        age = max(0.0, m.t - served.t_last)
        bound = (served.systematic + self.cfg.confidence_k * served.bound_stddev(m.t)
                 + self.cfg.max_drift_ppm * 1e-6 * age)
        # the measurement stands in for the truth (its noise makes this conservative): how far
        # outside the bound served before it did it fall?
        agg.note_miss(m.offset - served.predict(m.t), bound)

    def _in_doubt(self, fit: LineFit) -> LineFit:
        """The fit to serve while measurements contradict it.

        A pending measurement whose own interval excludes the fitted line contradicts it, and
        until more data decide (isolated outlier or step) either may be right: the served
        bound is widened to hold that measurement's interval too. Delay spikes, whose wide
        interval still holds the line, widen nothing. The newest ``CONTRADICTION_MEMORY``
        *accepted* measurements count the same way: a robust fit can down-weight the very
        samples it just took (the first replies after an outage, over which a wandering
        frequency carried the clock away from the old line), and until later samples move
        the line, their intervals are the best evidence of where the truth is (mixed
        scenario at 256 s polls: ms-wide misses right after such samples).
        """
        worst = 0.0
        recent = itertools.islice(reversed(self.samples), CONTRADICTION_MEMORY)
        for p in (*self.pending, *recent):
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
        self._take_run(run)
        return True

    def _take_run(self, run: list[Measurement]) -> None:
        """The pending run was not outliers: take it into the window (unscored) and refit."""
        self.samples.extend(run)
        self.history.extend(run)
        self.pending.clear()
        self.run = 0
        self._refit()

    def _clock_turned(self, fit: LineFit) -> bool:
        """Is the pending run the clock's frequency moving on, not outliers? Take it then.

        A step puts the replies at a new level; a turn of the frequency makes them leave
        the line further at each poll, on the course the newest accepted samples had already
        begun. So: at least two outliers on one side, each further out than the one before
        by more than half the outlier threshold (noise could not carry it so), none
        explained by its own queueing (congestion builds up the same way), and one
        straight line through the newest ``TURN_RECENT`` accepted samples and the run that
        is within the outlier threshold of every one of them (the fit's own noise scale,
        not the joint line's: a line through a step of more than a few thresholds is far
        from both levels; a smaller one may be taken as a turn, and the window then follows
        it as it follows any bend). Why: after
        the initial burst a fit's noise scale comes from replies seconds apart, and a
        frequency wandering by ppm within minutes (a fast thermal cycle) carried the clock
        off the line faster than its drift allowance. Every reply was then an outlier until
        enough agreed for a step (``_fit_was_wrong``'s line through the whole window, burst
        included, could not hold the bend), and the answer drifted 1.3 ms meanwhile
        (held-out ``wander-fast`` seed 302: 6 polls in a row after the burst). The samples
        are taken as ``_fit_was_wrong`` takes them, unscored: scoring the experts on them
        too left the aggregation leaning on the bend after it ended (the unit test's clock:
        169 against 56 µs)."""
        if self.cfg.experts is None:  # engine-v1 waits for a step's confirmation
            return False
        run = self.pending
        if len(run) < 2 or len(self.samples) < TURN_RECENT:
            return False
        floor = self.cfg.outlier_floor_s
        sigma = fit.sigma
        path = self.path_noise()
        if path is not None:
            sigma = max(sigma, path)
        limit = max(self.cfg.outlier_k * sigma, floor)
        res = [p.offset - fit.predict(p.t) for p in run]
        if not (all(r > 0 for r in res) or all(r < 0 for r in res)):
            return False
        # each further out by more than noise could carry it (a step's stay at one level)
        if any(abs(b) - abs(a) <= limit / 2 for a, b in itertools.pairwise(res)):
            return False
        if self.last_delay > 0 and any(abs(r) <= max(0.0, p.delay - self.last_delay) / 2 + floor
                                       for r, p in zip(res, run, strict=True)):
            return False
        pts = [*itertools.islice(self.samples, len(self.samples) - TURN_RECENT, None), *run]
        t = np.array([p.t for p in pts])
        y = np.array([p.offset for p in pts])
        t0 = t[-1]
        slope, level = np.polyfit(t - t0, y, 1)
        if np.max(np.abs(y - (level + slope * (t - t0)))) > limit:
            return False
        self._take_run(run)
        return True

    def _ambiguous(self, fit: LineFit, m: Measurement) -> bool:
        """Is ``m`` nearer the pending run than the line, its interval holding both? A reply
        that queued long is within the threshold of both: taking it as the end of the run
        threw away the run each time (the mixed scenario after an outage: a wandering
        frequency carried the clock 1–2 ms off the line while every third reply, wide
        enough to hold both, reset the count, and no step was ever confirmed). Only the
        new engine (``experts``) reads it so."""
        if self.cfg.experts is None:
            return False
        run = sorted(p.offset - fit.predict(p.t) for p in self.pending)
        level = run[len(run) // 2]
        r = m.offset - fit.predict(m.t)
        # nearer the run than the line, and its interval holds the run's level
        return abs(r - level) < abs(r) and abs(r - level) <= m.bound + self.cfg.outlier_floor_s

    def _pending_agree(self, fit: LineFit, need: int) -> bool:
        """Do the pending outliers describe one new offset (a step) rather than noise?"""
        run = self.pending[-need:]
        res = [p.offset - fit.predict(p.t) for p in run]
        if not (all(r > 0 for r in res) or all(r < 0 for r in res)):
            return False
        if self.cfg.experts is not None and self.last_delay > 0 and all(
                abs(r) <= max(0.0, p.delay - self.last_delay) / 2 + self.cfg.outlier_floor_s
                for r, p in zip(res, run, strict=True)):
            # every one of them queued long enough to explain its offset (a reply that
            # waited d longer on one leg is off by up to d/2): congestion on one path, not a
            # step of the clock, which shows at the usual delay (a 5-minute delay burst
            # once became a false step at 64 s polls, 470 µs off until it ended)
            return False
        spread = max(res) - min(res)
        return spread < 0.5 * min(abs(r) for r in res) + 2 * self.cfg.outlier_floor_s

    def usable(self) -> bool:
        """A fit on ``min_samples`` measurements, or (issue 13) on the agreeing run that
        confirmed a step: the frequency carries over from before it, so two samples place
        the line."""
        n = len(self.samples)
        if self.fit is None:
            return False
        return n >= self.cfg.min_samples or (self.cfg.serve_collecting and self.steps > 0
                                             and n >= 2)

    def typical_gap(self) -> float:
        """Median spacing of the window's samples (cached at each refit)."""
        return self._gap


class Engine:
    """Owns the tracks, the selection and the restored estimate; publishes ``ClockState``."""

    def __init__(self, cfg: EngineConfig | None = None, epoch: float = 0.0) -> None:
        self.cfg = cfg or EngineConfig()
        self.epoch = float(epoch)
        self.tracks: dict[str, Track] = {}
        self.selected: str | None = None
        self.restored: LineFit | None = None
        self.last_verdict: str = ""
        self.unusable: dict[str, str] = {}  # source name -> reason its source gave
        self.realtime = RealtimeMap(self.epoch)
        self.realtime_steps = 0  # unexplained changes of δ (steps, slew starts and ends)
        self.last_step: tuple[float, float] | None = None  # (size s, REALTIME when)
        self._in_step = False
        self.leaps: list[Leap] = []
        self.leap_votes: dict[str, int] = {}  # source -> its latest leap indicator
        self._leap_denials = 0
        self.prior_freq: float | None = None  # restored after a reboot: the frequency only

    # -- the system clock (δ = REALTIME − RAW − epoch) ------------------------------------
    def observe_clock(self, reading: ClockReading) -> float | None:
        """Record δ at ``reading``; returns the size (s) of a *new* step or slew of REALTIME
        that the recent δ rate does not explain, None otherwise (continuing or nothing).

        A run of consecutive unexplained samples is one event (a slew shows as its start);
        its size accumulates into ``last_step``. The fit is never touched.
        """
        d = reading.delta(self.epoch)
        jump = self.realtime.surprise(reading.raw, d, reading.width)
        oldest = min((t.history[0].t for t in self.tracks.values() if t.history),
                     default=reading.raw)
        self.realtime = self.realtime.add(reading.raw, d, reading.width, keep_after=oldest)
        if not jump:
            self._in_step = False
            return None
        if self._in_step and self.last_step is not None:
            self.last_step = (self.last_step[0] + jump, self.last_step[1])
            return None
        self._in_step = True
        self.realtime_steps += 1
        self.last_step = (jump, reading.real)
        return jump

    def _system_rate(self) -> float:
        """The rate at which REALTIME moves against the oscillator (s/s), as a guess for the
        reference's own rate before the samples can tell it: on a host another daemon keeps
        on time that daemon has measured the oscillator already; where nobody steers, it is
        0, the crystal's nominal rate, as before. A rate beyond ``SYSTEM_RATE_MAX`` is a
        slew in progress (an offset being removed), not a frequency: 0 then."""
        rate = self.realtime.settled_rate(SYSTEM_RATE_MAX)  # (None: no slow stretch yet)
        return 0.0 if rate is None else rate

    def _refresh_guesses(self) -> None:
        """Young tracks (whose fits may still serve the guess) follow the system rate as the
        δ history grows: the first sample usually comes before 30 s of it exist."""
        young = [t for t in self.tracks.values() if t.prior_freq is None and not t.pending
                 and len(t.samples) < self.cfg.fit.hard_slope_below]
        if not young:  # (the usual case: no need to walk the δ history every publication)
            return
        rate = self._system_rate()
        for track in young:
            if abs(rate - track.freq_guess) > GUESS_REFIT_S:
                track.freq_guess = rate
                track.refit()

    # -- leap seconds ------------------------------------------------------------------
    def leap_status(self, now: float) -> str:
        """``none``, ``insert pending`` or ``delete pending`` at raw time ``now``."""
        for lp in self.leaps:
            if lp.raw + LEAP_GUARD_S >= now:
                return "insert pending" if lp.seconds > 0 else "delete pending"
        return "none"

    def _announce(self, m: Measurement, track: Track) -> None:
        """A reference announces a leap for the end of its current UTC day: place it on the raw
        axis (refined by each announcement, using the fitted rate of raw against UTC)."""
        seconds = leap_seconds(m.leap)
        if not seconds:
            return
        utc_now = m.t + self.epoch + m.offset
        at = next_midnight(utc_now)
        freq = track.base_fit.freq if track.base_fit is not None else 0.0
        raw = m.t + (at - utc_now) / (1.0 + freq)
        for i, lp in enumerate(self.leaps):
            if lp.utc == at:
                if m.t < lp.raw - LEAP_GUARD_S:  # before it: refine its place
                    self.leaps[i] = replace(lp, raw=raw)
                return
        self.leaps.append(Leap(raw=raw, utc=at, seconds=seconds))
        self.leaps.sort(key=lambda lp: lp.raw)

    def _leap_free(self, m: Measurement, track: Track) -> Measurement | None:
        """``m`` on the continuous scale (None: too close to a leap to say which side)."""
        shift = 0.0
        for i, lp in enumerate(self.leaps):
            if abs(m.t - lp.raw) < LEAP_GUARD_S:
                return None
            if m.t < lp.raw:
                continue
            if not lp.confirmed:
                fit = track.base_fit
                applied = True
                if fit is not None:
                    pred = fit.predict(m.t)
                    applied = abs(m.offset + shift + lp.seconds - pred) <= abs(
                        m.offset + shift - pred)
                if applied:
                    self.leaps[i] = lp = replace(lp, confirmed=True)
                    self._leap_denials = 0
                else:
                    self._leap_denials += 1
                    if self._leap_denials >= LEAP_CONFIRM:  # the reference did not apply it
                        self.leaps.pop(i)
                        self._leap_denials = 0
                        return self._leap_free(m, track)
                    continue
            shift += lp.seconds
        return replace(m, offset=m.offset + shift) if shift else m

    def _leap_doubt(self) -> bool:
        """Do the references disagree about a pending leap (e.g. one of them smears)?"""
        fresh = {v != 0 for n, v in self.leap_votes.items() if n not in self.unusable}
        return len(fresh) > 1

    # -- input -------------------------------------------------------------------------
    def add(self, m: Measurement) -> str:
        track = self.tracks.get(m.source)
        if track is None:
            track = self.tracks[m.source] = Track(m.source, m.kind, self.cfg)
            if self.restored is not None:
                track.prior_freq = self.restored.freq
            elif self.prior_freq is not None:
                track.prior_freq = self.prior_freq
        track.freq_guess = self._system_rate()
        track.realtime = self.realtime
        self.leap_votes[m.source] = m.leap if leap_seconds(m.leap) else 0
        if m.leap:
            self._announce(m, track)
        if self.leaps:
            lf = self._leap_free(m, track)
            if lf is None:
                self.last_verdict = "leap"
                return "leap"
            m = lf
        self.last_verdict = track.add(m)
        return self.last_verdict

    def poll_feedback(self, source: str) -> tuple[float, float]:
        """(residual of ``source``'s last measurement against the prediction served before
        it, the bound it is judged against: 3 × the noise scale): what an adaptive poll
        policy (core/poll_policy.py) judges the prediction by. (0, 0): nothing to judge."""
        track = self.tracks.get(source)
        if track is None:
            return 0.0, 0.0
        return track.last_residual, 3.0 * track.last_scale

    # -- selection and publication -------------------------------------------------------
    def _stale_after(self, track: Track) -> float:
        return max(self.cfg.stale_after_s, 4.0 * track.typical_gap())

    def _void_after(self, track: Track) -> float:
        polls = self.cfg.void_after_polls
        if polls is None:
            return self.cfg.void_after_s
        gap = track.typical_gap()
        if len(track.samples) >= 2:  # an adaptive poll interval lengthens faster than the median
            gap = max(gap, track.samples[-1].t - track.samples[-2].t)
        return max(self.cfg.void_after_s, polls * gap)

    def _bound_now(self, track: Track, now: float) -> float:
        fit = track.fit
        assert fit is not None
        age = max(0.0, now - fit.t_last)
        return (fit.systematic + self.cfg.confidence_k * fit.bound_stddev(now)
                + self.cfg.max_drift_ppm * 1e-6 * age)

    # Order among equally good sources: the seed's hierarchy PTP > NTP > anything else.
    KIND_RANK: dict[str, int] = {"ptp": 0, "ntp": 1}  # noqa: RUF012 - read-only table

    def mark_unusable(self, source: str, reason: str) -> None:
        """A source's own liveness signal (e.g. ptp4l lost its master): stop selecting it.

        Its track and fit stay (for ``at`` queries and a quick return); ``_select`` skips it
        at once instead of waiting for the age-based staleness.
        """
        self.unusable[source] = reason

    def mark_usable(self, source: str) -> None:
        self.unusable.pop(source, None)

    def _selectable(self, track: Track, now: float) -> bool:
        """Usable, not declared dead by its source, and not silent for 3 typical poll gaps."""
        if track.name in self.unusable or not track.usable() or track.fit is None:
            return False
        limit = min(self._stale_after(track),
                    max(3.0 * track.typical_gap(), self.cfg.failover_floor_s))
        return now - track.fit.t_last <= limit

    def _select(self, now: float) -> Track | None:
        fresh = {
            name: self._bound_now(t, now)
            for name, t in self.tracks.items()
            if self._selectable(t, now)
        }
        if fresh:
            best = min(fresh, key=lambda n: (fresh[n], self.KIND_RANK.get(self.tracks[n].kind, 9)))
            cur = self.selected
            if cur in fresh and fresh[best] * self.cfg.switch_ratio >= fresh[cur]:
                best = cur
            self.selected = best
            return self.tracks[best]
        # nothing fresh: keep serving the best usable fit (freerunning), preferring tracks
        # whose source has not declared itself dead
        usable = [t for t in self.tracks.values() if t.usable()]
        if usable:
            chosen = min(usable, key=lambda t: (t.name in self.unusable, self._bound_now(t, now)))
            self.selected = chosen.name
            return chosen
        self.selected = None
        return None

    def snapshot(self, now: ClockReading | float,
                 unsync_bound: float = KERNEL_UNSYNC_MAXERROR_S) -> ClockState:
        """Freeze what queries need at ``now`` (a reading, or a raw time on a δ = 0 host;
        selection included)."""
        now = as_reading(now, self.epoch).raw
        self._refresh_guesses()
        chosen = self._select(now)
        leaps = tuple(self.leaps)
        if leaps and self._leap_doubt():
            leaps = tuple(replace(lp, smear_doubt=True) if lp.raw + LEAP_GUARD_S >= now else lp
                          for lp in leaps)
        summaries = tuple(self._summary(t, now, t is chosen) for t in self.tracks.values())
        common: dict[str, Any] = dict(
            created=now,
            confidence_k=self.cfg.confidence_k,
            void_after_s=self.cfg.void_after_s,
            unsync_bound=unsync_bound,
            tracks=summaries,
            fit_config=self.cfg.fit,
            epoch=self.epoch,
            realtime=self.realtime,
            leaps=leaps,
        )
        if chosen is not None and chosen.fit is not None:
            fit = self._cover_pending(chosen)
            disagreement = self._cross_check(chosen, now)
            if disagreement is not None:
                extra = disagreement.cover - self._bound_now(chosen, now)
                if extra > 0:
                    fit = replace(fit, systematic=fit.systematic + extra)
            common["void_after_s"] = self._void_after(chosen)
            return ClockState(
                fit=fit,
                holdover=self.cfg.holdover and not chosen.keeps_system_clock,
                disagreement=disagreement.describe() if disagreement else "",
                source=chosen.kind,
                max_drift=self.cfg.max_drift_ppm * 1e-6,
                stale_after=self._stale_after(chosen),
                history=tuple(chosen.history),
                steps=tuple(chosen.step_times),
                **common,
            )
        if self.restored is not None:
            return ClockState(
                fit=self.restored,
                source="restored",
                max_drift=self.cfg.restore_drift_ppm * 1e-6,
                stale_after=0.0,
                restored=True,
                **common,
            )
        if self.cfg.serve_collecting:
            collecting = [t for t in self.tracks.values()
                          if t.fit is not None and t.name not in self.unusable]
            if collecting:
                # fewer than min_samples: still the best estimate there is, with its own wide
                # bound (a 1–2 sample fit knows no frequency: 100 ppm), status unsynchronized
                track = min(collecting, key=lambda t: self._bound_now(t, now))
                return ClockState(fit=self._cover_pending(track), source=track.kind,
                                  max_drift=self.cfg.max_drift_ppm * 1e-6, stale_after=0.0,
                                  collecting=True, **common)
        return ClockState(fit=None, source="system", max_drift=0.0, stale_after=0.0, **common)

    def _cross_check(self, chosen: Track, now: float) -> Disagreement | None:
        """Does a fresh source of another kind contradict the chosen one (crosscheck.py)?"""

        def estimate(t: Track) -> Estimate:
            assert t.fit is not None
            return Estimate(t.name, t.kind, t.fit.predict(now), self._bound_now(t, now))

        others = [estimate(t) for t in self.tracks.values()
                  if t is not chosen and t.kind != chosen.kind and self._selectable(t, now)]
        return cross_check(estimate(chosen), others) if others else None

    @staticmethod
    def _cover_pending(track: Track) -> LineFit:
        """The fit, its systematic widened to cover unconfirmed outliers (issue 8).

        Until ``step_confirm`` outliers agree, the engine cannot tell a spike from a step of
        the clock; the served bound must hold under both, so it covers the pending samples'
        intervals too. One accepted sample clears them.
        """
        fit = track.fit
        assert fit is not None
        if not track.pending:
            return fit
        worst = max(abs(p.offset - fit.predict(p.t)) + p.bound for p in track.pending)
        return replace(fit, systematic=max(fit.systematic, worst))

    def _summary(self, track: Track, now: float, selected: bool) -> TrackSummary:
        last = track.last
        usable = track.usable()
        fresh = usable and track.fit is not None and now - track.fit.t_last <= self._stale_after(
            track)
        dead = self.unusable.get(track.name)
        if dead is not None:
            reason = f"unusable: {dead}"
            fresh = False
        elif not usable:
            reason = f"collecting ({len(track.samples)}/{self.cfg.min_samples} samples)"
        elif not fresh:
            reason = "stale"
        elif not self._selectable(track, now):
            reason = "silent (failover)"
        else:
            reason = "selected" if selected else "standby"
        if selected and reason not in ("selected",):
            reason += " (serving freerunning)"
        return TrackSummary(
            name=track.name,
            kind=track.kind,
            samples=len(track.samples),
            last_offset=last.offset if last else None,
            last_delay=last.delay if last else None,
            last_t=last.t if last else None,
            bound_now=self._bound_now(track, now) if usable else None,
            usable=bool(fresh),
            selected=selected,
            reason=reason,
        )

    # -- persistence (the daemon writes/reads the file; this is just the data) ------------
    def export_state(self, now: ClockReading | float) -> dict[str, float] | None:
        """The estimate worth keeping across restarts (like chrony's driftfile), or None.

        ``raw`` is the raw time it is anchored at and ``offset`` θ there (against this
        engine's ``epoch``, saved too); the daemon adds boot_id and REALTIME.
        """
        state = self.snapshot(now)
        fit = state.fit
        if fit is None or state.restored or state.collecting:  # 1–2 samples: not worth keeping
            return None
        # anchored at the newest measurement, not at ``now``: a stale estimate saved later must
        # not come back with its age (and the bound grown with it) forgotten
        t = fit.t_last
        # the frequency kept is the longest robust line's, like chrony's driftfile: a restart
        # is extrapolated over a gap of unknown length, and the served line's slope is a vote
        # of every window's (experts.py), short ones included
        track = self.tracks.get(self.selected) if self.selected is not None else None
        longest = track.cand_fits.get(track.windows[-1]) if track is not None else None
        return {
            "raw": t,
            "epoch": self.epoch,
            "offset": fit.predict(t),
            "freq": longest.freq if longest is not None else fit.freq,
            "offset_stddev": fit.bound_stddev(t),
            "freq_stddev": math.sqrt(fit.var_freq if fit.serve_var_freq is None
                                     else fit.serve_var_freq),
            "systematic": fit.systematic,
        }

    def restore_state(self, saved: dict[str, float], same_boot: bool = True) -> None:
        """Seed from ``export_state`` data.

        Same boot (raw continued to count): a freerunning estimate whose bound grows at
        ``restore_drift_ppm`` from the saved raw time, θ moved onto this engine's epoch. New
        boot (raw restarted; nothing is known about the offset): the frequency alone, as the
        prior of new fits (what chrony's driftfile keeps). Status stays unsynchronized.
        """
        freq = float(saved["freq"])
        if not same_boot:
            self.prior_freq = freq
            self.restored = None
            for track in self.tracks.values():
                track.prior_freq = freq
            return
        t = float(saved["raw"])
        offset = float(saved["offset"]) + float(saved.get("epoch", self.epoch)) - self.epoch
        self.restored = LineFit(
            t_ref=t,
            offset_ref=offset,
            freq=freq,
            var_offset=float(saved["offset_stddev"]) ** 2,
            var_freq=float(saved["freq_stddev"]) ** 2,
            sigma=float(saved["offset_stddev"]),
            systematic=float(saved["systematic"]),
            n=0,
            t_first=t,
            t_last=t,
        )
        for track in self.tracks.values():
            track.prior_freq = self.restored.freq
