"""The estimation engine: measurements in, immutable ``ClockState`` out. Pure: time is passed in.

One ``Track`` per source (the NTP source after its own per-round falseticker selection, each
PTP port, ...). Each track keeps a window of measurements, rejects isolated outliers, detects
steps (several consecutive measurements that agree with each other but not with the fit) and
refits. ``Engine.snapshot(now)`` picks the best usable track (smallest bound now, with
hysteresis so it does not flap) and freezes everything a query needs.

The daemon and the replay bench drive this same class; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from chronotickd.core.estimator import FitConfig, LineFit, fast_median, fit_arrays, fit_line
from chronotickd.core.experts import Aggregator, ExpertConfig, widen
from chronotickd.core.measurement import Measurement
from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S, ClockState, TrackSummary


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
    # window lengths (samples) the track chooses among by their one-poll-ahead prediction
    # error; capped by max_samples (see Track)
    candidate_windows: tuple[int, ...] = (8, 16, 32, 64)
    window_score_alpha: float = 1.0 / 16.0  # EWMA weight of each new prediction error
    step_false_rate: float = 1e-4  # tolerated chance that a run of outliers is not a step
    step_confirm_max: int = 8  # never wait for more agreeing outliers than this
    failover_floor_s: float = 10.0  # silence (s) before selection moves on, at least
    # at polls this far apart or more, two agreeing outliers confirm a step (see
    # Track.step_confirm); None keeps ``step_confirm`` at every poll interval
    step_long_gap_s: float | None = 256.0
    # online aggregation of experts (core/experts.py); None serves the best candidate alone
    experts: ExpertConfig | None = field(default_factory=ExpertConfig)


def _shift_fit(f: LineFit, delta: float) -> LineFit:
    """The same line on a system clock that jumped by ``delta`` seconds."""
    return replace(f, t_ref=f.t_ref + delta, offset_ref=f.offset_ref - delta,
                   t_first=f.t_first + delta, t_last=f.t_last + delta)


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
        self.fit: LineFit | None = None  # what is served (``served``, widened while in doubt)
        self.served: LineFit | None = None  # the experts' combination (or ``base_fit``)
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
        self.agg: Aggregator | None = (
            Aggregator(cfg.experts, tuple(f"line-{w}" for w in self.windows))
            if cfg.experts is not None else None)
        self.last_residual = 0.0  # last measurement − served prediction (for the poll policy)
        self.last_scale = 0.0  # the noise scale that residual is judged against

    def _threshold(self, fit: LineFit, m: Measurement) -> float:
        spread = math.hypot(fit.stddev(m.t), fit.sigma)
        drift = self.cfg.max_drift_ppm * 1e-6 * max(0.0, m.t - fit.t_last)
        return max(self.cfg.outlier_k * spread, self.cfg.outlier_floor_s) + drift

    def step_confirm(self) -> int:
        """Agreeing consecutive outliers needed to call a step at the current outlier rate."""
        need = self.cfg.step_confirm
        long_gap = self.cfg.step_long_gap_s
        if long_gap is not None and self._gap >= long_gap:
            # waiting costs (need − 1) polls of wrong answers, which at long polls is most of
            # the error budget, while a false step needs two wrong offsets that agree
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
        served = self.fit
        if served is not None:
            self.last_residual = m.offset - served.predict(m.t)
            self.last_scale = max(served.sigma, self.cfg.fit.noise_floor_s)
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
                    self.fit = self._in_doubt(self.served if self.served is not None else fit)
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
                if self.cfg.experts is not None:
                    self.agg = Aggregator(self.cfg.experts, self.agg.names[:len(self.windows)]
                                          if self.agg else tuple(f"line-{w}"
                                                                 for w in self.windows))
                self._refit()
                return "step"
        self.pending.clear()
        for _ in range(self.run):  # the run ended without a step: isolated outliers
            self._note(True)
        self.run = 0
        self._note(False)
        self._score(m)
        if self.agg is not None and fit is not None:
            self._learn(m)
        self.samples.append(m)
        self.history.append(m)
        self._refit()
        return "accepted"

    def shift_time(self, delta: float) -> None:
        """Re-express everything on a system clock that jumped by ``delta`` (see
        ``Engine.clock_stepped``): same instants, new readings, offsets ``delta`` less."""

        def move(m: Measurement) -> Measurement:
            return replace(m, t=m.t + delta, offset=m.offset - delta)

        self.samples = deque(map(move, self.samples), maxlen=self.samples.maxlen)
        self.history = deque(map(move, self.history), maxlen=self.history.maxlen)
        self.pending = [move(m) for m in self.pending]
        self.last = move(self.last) if self.last else None
        self.fit = _shift_fit(self.fit, delta) if self.fit else None
        self.base_fit = _shift_fit(self.base_fit, delta) if self.base_fit else None
        self.served = _shift_fit(self.served, delta) if self.served else None
        self.cand_fits = {w: _shift_fit(f, delta) if f else None
                          for w, f in self.cand_fits.items()}
        self.step_times = [t + delta for t in self.step_times]

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
        self.served = self.fit
        if self.agg is not None and self.fit is not None:
            long_fit = fits[self.windows[-1]]
            line = self.agg.propose([fits[w] for w in self.windows], t, y,
                                    long_fit.freq if long_fit is not None else 0.0)
            if line is not None:
                self.served = self.fit = widen(self.fit, line, self.cfg.confidence_k,
                                               self.agg.calibration())

    def _learn(self, m: Measurement) -> None:
        """Score the experts on an accepted measurement they have not seen, and note whether
        the served bound (before this measurement) certainly missed: its interval and the
        measurement's own do not overlap."""
        agg = self.agg
        served = self.served
        assert agg is not None and served is not None
        scale = max(served.sigma, self.cfg.fit.noise_floor_s)
        agg.score(m.t, m.offset, scale)
        age = max(0.0, m.t - served.t_last)
        bound = (served.systematic + self.cfg.confidence_k * served.bound_stddev(m.t)
                 + self.cfg.max_drift_ppm * 1e-6 * age)
        agg.note_miss(abs(m.offset - served.predict(m.t)) - m.bound - bound)

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
        """A fit on ``min_samples`` measurements, or on the agreeing run that confirmed a
        step (the frequency is carried over from before it, so two samples place the line)."""
        n = len(self.samples)
        return self.fit is not None and (n >= self.cfg.min_samples
                                         or (self.steps > 0 and n >= 2))

    def typical_gap(self) -> float:
        """Median spacing of the window's samples (cached at each refit)."""
        return self._gap


class Engine:
    """Owns the tracks, the selection and the restored estimate; publishes ``ClockState``."""

    def __init__(self, cfg: EngineConfig | None = None) -> None:
        self.cfg = cfg or EngineConfig()
        self.tracks: dict[str, Track] = {}
        self.selected: str | None = None
        self.restored: LineFit | None = None
        self.last_verdict: str = ""
        self.unusable: dict[str, str] = {}  # source name -> reason its source gave

    # -- input -------------------------------------------------------------------------
    def add(self, m: Measurement) -> str:
        track = self.tracks.get(m.source)
        if track is None:
            track = self.tracks[m.source] = Track(m.source, m.kind, self.cfg)
            if self.restored is not None:
                track.prior_freq = self.restored.freq
        self.last_verdict = track.add(m)
        return self.last_verdict

    # -- selection and publication -------------------------------------------------------
    def _stale_after(self, track: Track) -> float:
        return max(self.cfg.stale_after_s, 4.0 * track.typical_gap())

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

    def snapshot(self, now: float, unsync_bound: float = KERNEL_UNSYNC_MAXERROR_S) -> ClockState:
        """Freeze what queries need at ``now`` (selection included)."""
        chosen = self._select(now)
        summaries = tuple(self._summary(t, now, t is chosen) for t in self.tracks.values())
        common: dict[str, Any] = dict(
            created=now,
            confidence_k=self.cfg.confidence_k,
            void_after_s=self.cfg.void_after_s,
            unsync_bound=unsync_bound,
            tracks=summaries,
            fit_config=self.cfg.fit,
        )
        if chosen is not None and chosen.fit is not None:
            return ClockState(
                fit=self._cover_pending(chosen),
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
        collecting = [t for t in self.tracks.values()
                      if t.fit is not None and t.name not in self.unusable]
        if collecting:
            # fewer than min_samples: still the best estimate there is, with its own wide
            # bound (a 1-2 sample fit knows no frequency: 100 ppm), status unsynchronized
            track = min(collecting, key=lambda t: self._bound_now(t, now))
            return ClockState(fit=self._cover_pending(track), source=track.kind,
                              max_drift=self.cfg.max_drift_ppm * 1e-6, stale_after=0.0,
                              collecting=True, **common)
        return ClockState(fit=None, source="system", max_drift=0.0, stale_after=0.0, **common)

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

    # -- system clock steps ---------------------------------------------------------------
    def clock_stepped(self, delta: float) -> None:
        """The system clock jumped by ``delta`` seconds (seen by the caller, e.g. as a change
        of CLOCK_REALTIME − CLOCK_MONOTONIC). Re-express everything on the new time scale:
        an instant that read ``t`` now reads ``t + delta`` and its offset is ``delta`` less,
        so the fits stay valid and no "step" has to be re-learned from measurements.
        """

        for track in self.tracks.values():
            track.shift_time(delta)
        if self.restored is not None:
            self.restored = _shift_fit(self.restored, delta)

    # -- persistence (the daemon writes/reads the file; this is just the data) ------------
    def export_state(self, now: float) -> dict[str, float] | None:
        """The estimate worth keeping across restarts (like chrony's driftfile), or None."""
        state = self.snapshot(now)
        fit = state.fit
        if fit is None or state.restored:
            return None
        # anchored at the newest measurement, not at ``now``: a stale estimate saved later must
        # not come back with its age (and the bound grown with it) forgotten
        t = fit.t_last
        return {
            "t": t,
            "offset": fit.predict(t),
            "freq": fit.freq,
            "offset_stddev": fit.bound_stddev(t),
            "freq_stddev": math.sqrt(fit.var_freq if fit.serve_var_freq is None
                                     else fit.serve_var_freq),
            "systematic": fit.systematic,
        }

    def restore_state(self, saved: dict[str, float]) -> None:
        """Seed a freerunning estimate (and the frequency prior) from ``export_state`` data."""
        t = float(saved["t"])
        self.restored = LineFit(
            t_ref=t,
            offset_ref=float(saved["offset"]),
            freq=float(saved["freq"]),
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
