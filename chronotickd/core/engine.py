"""The estimation engine: measurements in, immutable ``ClockState`` out. Pure: time is passed in.

One ``Track`` per source (the NTP source after its own per-round falseticker selection, each
PTP port, ...). Each track keeps a window of measurements, rejects isolated outliers, detects
steps (several consecutive measurements that agree with each other but not with the fit) and
refits. ``Engine.snapshot(now)`` picks the best usable track (smallest bound now, with
hysteresis so it does not flap) and freezes everything a query needs.

The daemon and the replay bench drive this same class; nothing here reads a clock.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from chronotickd.core.estimator import FitConfig, LineFit, fit_line
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


class Track:
    """Measurements of one source and their current fit."""

    def __init__(self, name: str, kind: str, cfg: EngineConfig) -> None:
        self.name = name
        self.kind = kind
        self.cfg = cfg
        self.samples: deque[Measurement] = deque(maxlen=cfg.max_samples)
        self.history: deque[Measurement] = deque(maxlen=cfg.history_samples)
        self.pending: list[Measurement] = []
        self.fit: LineFit | None = None
        self.prior_freq: float | None = None
        self.last: Measurement | None = None
        self.steps = 0
        self.outliers = 0

    def _threshold(self, fit: LineFit, m: Measurement) -> float:
        spread = math.hypot(fit.stddev(m.t), fit.sigma)
        drift = self.cfg.max_drift_ppm * 1e-6 * max(0.0, m.t - fit.t_last)
        return max(self.cfg.outlier_k * spread, self.cfg.outlier_floor_s) + drift

    def add(self, m: Measurement) -> str:
        """Take one measurement; returns ``accepted``, ``outlier`` or ``step``."""
        self.last = m
        fit = self.fit
        if fit is not None and len(self.samples) >= self.cfg.min_samples:
            residual = m.offset - fit.predict(m.t)
            if abs(residual) > self._threshold(fit, m):
                self.pending.append(m)
                if len(self.pending) < self.cfg.step_confirm or not self._pending_agree(fit):
                    self.pending = self.pending[-self.cfg.step_confirm :]
                    self.outliers += 1
                    return "outlier"
                self.prior_freq = fit.freq
                self.samples.clear()
                self.samples.extend(self.pending)
                self.history.extend(self.pending)
                self.pending.clear()
                self.steps += 1
                self.fit = fit_line(self.samples, self.cfg.fit, self.prior_freq)
                return "step"
        self.pending.clear()
        self.samples.append(m)
        self.history.append(m)
        self.fit = fit_line(self.samples, self.cfg.fit, self.prior_freq)
        return "accepted"

    def _pending_agree(self, fit: LineFit) -> bool:
        """Do the pending outliers describe one new offset (a step) rather than noise?"""
        res = [p.offset - fit.predict(p.t) for p in self.pending[-self.cfg.step_confirm :]]
        if not (all(r > 0 for r in res) or all(r < 0 for r in res)):
            return False
        spread = max(res) - min(res)
        return spread < 0.5 * min(abs(r) for r in res) + 2 * self.cfg.outlier_floor_s

    def usable(self) -> bool:
        return self.fit is not None and len(self.samples) >= self.cfg.min_samples

    def typical_gap(self) -> float:
        times = [m.t for m in self.samples]
        if len(times) < 2:
            return 0.0
        return statistics.median(b - a for a, b in itertools.pairwise(times))


class Engine:
    """Owns the tracks, the selection and the restored estimate; publishes ``ClockState``."""

    def __init__(self, cfg: EngineConfig | None = None) -> None:
        self.cfg = cfg or EngineConfig()
        self.tracks: dict[str, Track] = {}
        self.selected: str | None = None
        self.restored: LineFit | None = None
        self.last_verdict: str = ""

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
        return (fit.systematic + self.cfg.confidence_k * fit.stddev(now)
                + self.cfg.max_drift_ppm * 1e-6 * age)

    def _select(self, now: float) -> Track | None:
        fresh = {
            name: self._bound_now(t, now)
            for name, t in self.tracks.items()
            if t.usable() and t.fit is not None and now - t.fit.t_last <= self._stale_after(t)
        }
        if fresh:
            best = min(fresh, key=fresh.__getitem__)
            cur = self.selected
            if cur in fresh and fresh[best] * self.cfg.switch_ratio >= fresh[cur]:
                best = cur
            self.selected = best
            return self.tracks[best]
        # nothing fresh: keep serving the most recent usable fit (freerunning)
        usable = [t for t in self.tracks.values() if t.usable()]
        if usable:
            newest = max(usable, key=lambda t: t.fit.t_last if t.fit else 0.0)
            self.selected = newest.name
            return newest
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
        if not usable:
            reason = f"collecting ({len(track.samples)}/{self.cfg.min_samples} samples)"
        elif not fresh:
            reason = "stale"
        else:
            reason = "selected" if selected else "standby"
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

        def move(m: Measurement) -> Measurement:
            return replace(m, t=m.t + delta, offset=m.offset - delta)

        def move_fit(f: LineFit) -> LineFit:
            return replace(f, t_ref=f.t_ref + delta, offset_ref=f.offset_ref - delta,
                           t_first=f.t_first + delta, t_last=f.t_last + delta)

        for track in self.tracks.values():
            track.samples = deque(map(move, track.samples), maxlen=track.samples.maxlen)
            track.history = deque(map(move, track.history), maxlen=track.history.maxlen)
            track.pending = [move(m) for m in track.pending]
            track.last = move(track.last) if track.last else None
            track.fit = move_fit(track.fit) if track.fit else None
        if self.restored is not None:
            self.restored = move_fit(self.restored)

    # -- persistence (the daemon writes/reads the file; this is just the data) ------------
    def export_state(self, now: float) -> dict[str, float] | None:
        """The estimate worth keeping across restarts (like chrony's driftfile), or None."""
        state = self.snapshot(now)
        fit = state.fit
        if fit is None or state.restored:
            return None
        return {
            "t": now,
            "offset": fit.predict(now),
            "freq": fit.freq,
            "offset_stddev": fit.stddev(now),
            "freq_stddev": math.sqrt(fit.var_freq),
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
