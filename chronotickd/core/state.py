"""The immutable state the engine publishes, and the O(1) arithmetic every query runs on it.

A ``ClockState`` is built after each measurement (and periodically, so status and selection
follow the passage of time). Serving a request is ``state.answer(raw, real)``: a handful of
multiplications, never a wait on a source or a model.

Time base (chronotickd/core/timebase.py): the fit is θ(raw) = reference − (raw + epoch) on
CLOCK_MONOTONIC_RAW; a query reads both clocks and is answered as
``offset_vs_system = θ(raw) − δ`` with ``δ = real − raw − epoch``. The bound (half-width,
seconds) at raw time ``t`` is::

    bound(t) = systematic + k · stddev(t) + max_drift · max(0, t − t_last) + width/2

``systematic`` is what averaging cannot remove (weighted mean of each measurement's own bound:
half the round trip + root delay/2 + root dispersion for NTP), ``stddev(t)`` the fit's standard
error at ``t`` (it grows with the distance from the window's centre through the frequency
error), ``k`` the confidence multiplier and ``max_drift`` how fast the true frequency may move
away from the fitted one between measurements. See docs/design.md.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from chronotickd.core.estimator import FitConfig, LineFit, fit_line
from chronotickd.core.leap import Leap, correction
from chronotickd.core.measurement import Measurement, Status
from chronotickd.core.timebase import REAL_FLOAT_SLACK_S, ClockReading, RealtimeMap, as_reading

# What the Linux kernel reports as maxerror for an unsynchronized clock (NTP_PHASE_LIMIT, 16 s).
KERNEL_UNSYNC_MAXERROR_S = 16.0


class FitNeeded(Exception):
    """``at(..., cached_only=True)`` would have to fit a line (about 0.1 ms) that this state
    has not fitted yet: the caller runs the request where a fit may take its time."""


@dataclass(frozen=True, slots=True)
class TimeAnswer:
    """Corrected time for one system-clock instant: ``earliest ≤ true time ≤ latest``."""

    system_time: float  # REALTIME seconds (what the system clock showed)
    offset: float  # reference − system_time
    bound: float
    status: Status
    source: str
    as_of: float  # system time (REALTIME) of the newest measurement behind the answer (0: none)
    void_after: float  # past this system time the estimate is no longer served

    @property
    def corrected_time(self) -> float:
        return self.system_time + self.offset

    @property
    def earliest(self) -> float:
        return self.corrected_time - self.bound

    @property
    def latest(self) -> float:
        return self.corrected_time + self.bound

    @property
    def age(self) -> float:
        return max(0.0, self.system_time - self.as_of) if self.as_of else float("inf")


@dataclass(frozen=True, slots=True)
class TrackSummary:
    """What ``sources`` shows about one measured source as the engine sees it."""

    name: str
    kind: str
    samples: int
    last_offset: float | None
    last_delay: float | None
    last_t: float | None
    bound_now: float | None
    usable: bool
    selected: bool
    reason: str


_UNSYNC = Status.UNSYNCHRONIZED
_FREE = Status.FREERUNNING
_SYNC = Status.SYNCHRONIZED


@dataclass(frozen=True, slots=True)
class ClockState:
    """Immutable snapshot; every public method is pure arithmetic on its fields.

    Times inside (``fit``, ``history``, ``steps``, ``leaps``) are raw seconds; answers are
    given against the system clock (REALTIME) through the reading the caller passes in.
    """

    created: float
    fit: LineFit | None
    source: str
    confidence_k: float
    max_drift: float
    stale_after: float
    void_after_s: float
    unsync_bound: float
    restored: bool = False
    tracks: tuple[TrackSummary, ...] = ()
    history: tuple[Measurement, ...] = field(default=(), repr=False)
    steps: tuple[float, ...] = ()  # raw times the reference stepped (``at`` never fits across)
    fit_config: FitConfig = field(default_factory=FitConfig, repr=False)
    disagreement: str = ""  # sources of different kinds contradict each other (crosscheck.py)
    epoch: float = 0.0  # whole seconds: θ = reference − (raw + epoch)
    realtime: RealtimeMap = field(default_factory=RealtimeMap, repr=False)
    leaps: tuple[Leap, ...] = ()
    # the fit is a collecting track's (fewer than min_samples): served with its own honest
    # (wide) bound while that is tighter than ``unsync_bound``, status unsynchronized
    collecting: bool = False
    # past the void (``void_after_s`` after the newest measurement) nothing is vouched for:
    # the answer is unsynchronized with at least ``unsync_bound``. Its midpoint is the system
    # clock (offset 0, source ``system``), or with ``holdover`` the line extrapolated: a
    # free-running oscillator keeps its rate far better than 16 s (a 10 ppm clock is 72 ms
    # off after 2 h without replies; the stale line about 0.4 ms). The engine sets it unless
    # another daemon was seen keeping the system clock on time (then the system clock is the
    # better guess: it still has that daemon's sources).
    holdover: bool = False
    epoch_ns: int = field(init=False, default=0, repr=False)
    # ``at``'s local fits, memoized per snapshot: (lo, hi) → LineFit | None, "times" → the
    # history's times. A fit depends only on fields of this immutable snapshot, so the cache
    # is exact; it holds at most one entry per window of the history. Queries for nearby
    # system times (the usual case, and any flood of them) then cost a lookup, not a fit.
    _fits: dict[Any, Any] = field(init=False, default_factory=dict, repr=False, compare=False)

    # -- queries -------------------------------------------------------------------------
    @property
    def _holds_over(self) -> bool:
        """Past the void, serve the line (``holdover``); never a collecting track's."""
        return self.holdover and not self.collecting

    def _bound(self, fit: LineFit, t: float, last: float) -> float:
        age = max(0.0, t - last)
        return fit.systematic + self.confidence_k * fit.bound_stddev(t) + self.max_drift * age

    def __post_init__(self) -> None:
        e = self.epoch  # whole seconds in practice: exact in integers
        object.__setattr__(self, "epoch_ns", round(e) * 10**9 if e == round(e) else round(e * 1e9))

    def answer(self, raw: float, real: float, width: float = 0.0
               ) -> tuple[float, float, Status, str, float, float]:
        """The answer for a query that read ``raw`` (MONOTONIC_RAW) and ``real`` (REALTIME,
        ``width`` apart), all seconds, as a plain tuple ``(offset_vs_system, bound, status,
        source, as_of, void_after)``; ``as_of`` and ``void_after`` are REALTIME seconds (0
        when unknown). A float ``real`` near 1.8e9 s is exact to 1.2e-7 s only: the bound
        grows by that (``answer_ns`` has no such loss)."""
        off, bound, status, source, as_of, void = self.answer_delta(
            raw, (real - self.epoch) - raw, width)
        if status is not _UNSYNC:
            bound += REAL_FLOAT_SLACK_S
        return off, bound, status, source, as_of, void

    def answer_ns(self, raw_ns: int, real_ns: int, width_ns: int = 0
                  ) -> tuple[float, float, Status, str, float, float]:
        """``answer`` from the integer nanosecond reads (the serving hot path): δ is formed
        in integers, so no float cancellation loses precision."""
        return self.answer_delta(raw_ns * 1e-9, (real_ns - raw_ns - self.epoch_ns) * 1e-9,
                                 width_ns * 1e-9)

    def answer_delta(self, raw: float, delta: float, width: float = 0.0
                     ) -> tuple[float, float, Status, str, float, float]:
        """The answer at raw time ``raw`` for a system clock ``delta`` = REALTIME − RAW −
        epoch away: ``offset_vs_system = θ(raw) − δ``, bound at ``raw`` + ``width``/2."""
        fit = self.fit
        if fit is None:
            return 0.0, self.unsync_bound, _UNSYNC, "system", 0.0, 0.0
        t_last = fit.t_last
        void = raw > t_last + self.void_after_s
        if void and not self._holds_over:
            return 0.0, self.unsync_bound, _UNSYNC, "system", 0.0, 0.0
        status = _FREE if self.restored or raw - t_last > self.stale_after else _SYNC
        offset = fit.predict(raw) - delta
        bound = self._bound(fit, raw, t_last) + width / 2
        if void:  # holdover: the line's guess, vouched for no better than the system clock
            status = _UNSYNC
            bound = max(bound, self.unsync_bound + width / 2)
        if self.collecting:
            if bound >= self.unsync_bound:
                return 0.0, self.unsync_bound, _UNSYNC, "system", 0.0, 0.0
            status = _UNSYNC
        if self.leaps:
            shift, extra = correction(self.leaps, raw)
            offset += shift
            bound += extra
        as_of = t_last + self.epoch + delta  # the last measurement, on today's REALTIME scale
        return offset, bound, status, self.source, as_of, as_of + self.void_after_s

    def query(self, now: ClockReading | float) -> TimeAnswer:
        """Best estimate now (a float is a δ = 0 reading: replay and simulation)."""
        r = as_reading(now, self.epoch)
        return TimeAnswer(r.real, *self.answer(r.raw, r.real, r.width))

    def future(self, now: ClockReading | float, seconds_ahead: float) -> TimeAnswer:
        """The answer for ``seconds_ahead`` from now as it can be promised now (REALTIME is
        assumed not to be stepped in between; its rate is the oscillator's)."""
        r = as_reading(now, self.epoch)
        ahead = max(0.0, seconds_ahead)
        return TimeAnswer(r.real + ahead, *self.answer(r.raw + ahead, r.real + ahead, r.width))

    def at(self, system_time: float, now: ClockReading | float | None = None,
           cached_only: bool = False) -> TimeAnswer:
        """Retrospective estimate for a past system time, using measurements on both sides.

        The system time is mapped to the raw instant(s) it was shown at through the REALTIME
        history (``realtime``; ``now``, the caller's current reading, extends it to the
        present). After a backward step a system time was shown twice and the answer covers
        both; a step's own gap covers every instant it may have meant. At each raw instant the
        history around it is refitted (measurements that arrived later included), so the
        answer is at least as good as what ``query`` would have said then. The local fit
        never straddles a step of the reference.

        Local fits are kept with the state, so repeated ``at`` calls near each other cost
        arithmetic only. ``cached_only``: raise ``FitNeeded`` instead of fitting (the server
        answers such calls on its event loop and sends only the rest to its work pool).
        """
        reading = as_reading(now, self.epoch) if now is not None else None
        if reading is None and not self.realtime.points:
            reading = ClockReading.trace(system_time, self.epoch)  # δ = 0 host: trace time
        lo, hi, slack = self.realtime.to_raw(system_time, reading)
        first = self._theta_at(lo, cached_only)
        if first is None:
            return TimeAnswer(system_time, 0.0, self.unsync_bound, _UNSYNC, "system", 0.0, 0.0)
        _theta, _bound, status, as_of_raw = first
        low = math.inf
        high = -math.inf
        for raw_i in (lo, hi) if hi > lo else (lo,):
            got = self._theta_at(raw_i, cached_only)
            if got is None:  # past the void: the whole span cannot be vouched for
                return TimeAnswer(system_time, 0.0, self.unsync_bound, _UNSYNC, "system",
                                  0.0, 0.0)
            true_i = raw_i + self.epoch + got[0]  # the reference's time then
            low, high = min(low, true_i - got[1]), max(high, true_i + got[1])
        offset = (low + high) / 2 - system_time
        bound = (high - low) / 2 + slack + REAL_FLOAT_SLACK_S
        as_of = self.realtime.to_real(as_of_raw) if as_of_raw else 0.0
        return TimeAnswer(system_time, offset, bound, status, self.source, as_of,
                          as_of + self.void_after_s if as_of else 0.0)

    def _theta_at(self, raw: float, cached_only: bool = False
                  ) -> tuple[float, float, Status, float] | None:
        """(θ in UTC at ``raw``, bound, status, raw of the newest measurement used) from the
        history around ``raw`` (or the served fit); None when nothing is known."""
        fit = self.fit
        if fit is None:
            return None
        t_last = fit.t_last
        if raw > t_last + self.void_after_s:
            if not self._holds_over:
                return None
            # past the void: the line held over, as ``answer_delta`` serves it
            got = (fit.predict(raw), max(self._bound(fit, raw, t_last), self.unsync_bound),
                   _UNSYNC, t_last)
        else:
            got = self._retro(raw, cached_only)
        if got is None:
            status = _FREE if self.restored or raw - t_last > self.stale_after else _SYNC
            got = (fit.predict(raw), self._bound(fit, raw, t_last), status, t_last)
        if self.leaps:
            shift, extra = correction(self.leaps, raw)
            got = (got[0] + shift, got[1] + extra, got[2], got[3])
        return got

    def _retro(self, t: float, cached_only: bool = False
               ) -> tuple[float, float, Status, float] | None:
        hist = self.history
        if not hist:
            return None
        times = self._fits.get("times")
        if times is None:
            if cached_only:  # a walk over the whole history: not on the event loop either
                raise FitNeeded
            times = self._fits["times"] = [m.t for m in hist]
        k = bisect.bisect_right(self.steps, t)
        lo = bisect.bisect_left(times, self.steps[k - 1]) if k else 0
        hi = bisect.bisect_left(times, self.steps[k]) if k < len(self.steps) else len(hist)
        if lo >= hi:
            return None
        ans = self._at_segment(t, hist, times, lo, hi, cached_only)
        if ans is not None and hi < len(hist) and t > times[hi - 1]:
            after = self._at_segment(t, hist, times, hi, len(hist), cached_only)
            if after is not None:  # in the gap where the reference stepped: cover both sides
                low = min(ans[0] - ans[1], after[0] - after[1])
                high = max(ans[0] + ans[1], after[0] + after[1])
                return (low + high) / 2, (high - low) / 2, ans[2], ans[3]
        return ans

    def _at_segment(self, t: float, hist: tuple[Measurement, ...], times: list[float],
                    seg_lo: int, seg_hi: int, cached_only: bool = False
                    ) -> tuple[float, float, Status, float] | None:
        """Local fit over the measurements ``hist[seg_lo:seg_hi]`` nearest to ``t``."""
        assert self.fit is not None
        i = bisect.bisect_left(times, t, seg_lo, seg_hi)
        window = max(8, min(32, seg_hi - seg_lo))
        lo = max(seg_lo, i - window // 2)
        hi = min(seg_hi, lo + window)
        lo = max(seg_lo, hi - window)
        key = (lo, hi)
        if key in self._fits:
            local = self._fits[key]
        elif cached_only:
            raise FitNeeded
        else:
            local = self._fits[key] = fit_line(hist[lo:hi], self.fit_config,
                                               prior_freq=self.fit.freq)
        if local is None:
            return None
        nearest = min(abs(t - times[j]) for j in range(max(lo, i - 1), min(hi, i + 1)))
        bound = (local.systematic + self.confidence_k * local.bound_stddev(t)
                 + self.max_drift * nearest)
        status = _SYNC if nearest <= self.stale_after else _FREE
        return local.predict(t), bound, status, local.t_last
