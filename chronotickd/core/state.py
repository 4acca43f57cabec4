"""The immutable state the engine publishes, and the O(1) arithmetic every query runs on it.

A ``ClockState`` is built after each measurement (and periodically, so status and selection
follow the passage of time). Serving a request is ``state.query(system_time)``: a handful of
multiplications, never a wait on a source or a model.

The bound (half-width, seconds) at system time ``t`` is::

    bound(t) = systematic + k · stddev(t) + max_drift · max(0, t − t_last)

``systematic`` is what averaging cannot remove (weighted mean of each measurement's own bound:
half the round trip + root delay/2 + root dispersion for NTP), ``stddev(t)`` the fit's standard
error at ``t`` (it grows with the distance from the window's centre through the frequency
error), ``k`` the confidence multiplier and ``max_drift`` how fast the true frequency may move
away from the fitted one between measurements. See docs/design.md.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from chronotickd.core.estimator import FitConfig, LineFit, fit_line
from chronotickd.core.measurement import Measurement, Status

# What the Linux kernel reports as maxerror for an unsynchronized clock (NTP_PHASE_LIMIT, 16 s).
KERNEL_UNSYNC_MAXERROR_S = 16.0


@dataclass(frozen=True, slots=True)
class TimeAnswer:
    """Corrected time for one system-clock instant: ``earliest ≤ true time ≤ latest``."""

    system_time: float
    offset: float
    bound: float
    status: Status
    source: str
    as_of: float  # system time of the newest measurement behind the answer (0 if none)
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


@dataclass(frozen=True, slots=True)
class ClockState:
    """Immutable snapshot; every public method is pure arithmetic on its fields."""

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
    steps: tuple[float, ...] = ()  # system times where the clock stepped (``at`` never fits across)
    fit_config: FitConfig = field(default_factory=FitConfig, repr=False)
    # the fit is a collecting track's (fewer than min_samples): served with its own honest
    # (wide) bound but status unsynchronized, where it is tighter than ``unsync_bound``
    collecting: bool = False

    # -- queries -------------------------------------------------------------------------
    def _bound(self, fit: LineFit, t: float, last: float) -> float:
        age = max(0.0, t - last)
        return fit.systematic + self.confidence_k * fit.bound_stddev(t) + self.max_drift * age

    def answer(self, t: float) -> tuple[float, float, Status, str, float, float]:
        """``query(t)`` as a plain tuple ``(offset, bound, status, source, as_of, void_after)``.

        The serving hot path (``now`` thousands of times a second) uses this directly: building
        a ``TimeAnswer`` costs more than the arithmetic itself.
        """
        fit = self.fit
        if fit is None:
            return 0.0, self.unsync_bound, Status.UNSYNCHRONIZED, "system", 0.0, 0.0
        t_last = fit.t_last
        void_after = t_last + self.void_after_s
        if t > void_after:
            return 0.0, self.unsync_bound, Status.UNSYNCHRONIZED, "system", 0.0, 0.0
        if self.collecting:
            bound = self._bound(fit, t, t_last)
            if bound >= self.unsync_bound:
                return 0.0, self.unsync_bound, Status.UNSYNCHRONIZED, "system", 0.0, 0.0
            return (fit.predict(t), bound, Status.UNSYNCHRONIZED, self.source, t_last,
                    void_after)
        if self.restored or t - t_last > self.stale_after:
            status = Status.FREERUNNING
        else:
            status = Status.SYNCHRONIZED
        return (fit.predict(t), self._bound(fit, t, t_last), status, self.source, t_last,
                void_after)

    def query(self, t: float) -> TimeAnswer:
        """Best estimate for system time ``t`` (now, or ahead of the last measurement)."""
        return TimeAnswer(t, *self.answer(t))

    def future(self, now: float, seconds_ahead: float) -> TimeAnswer:
        """The answer for ``now + seconds_ahead`` as it can be promised at ``now``."""
        return self.query(now + max(0.0, seconds_ahead))

    def at(self, t: float) -> TimeAnswer:
        """Retrospective estimate for a past system time, using measurements on both sides.

        Fits the history around ``t`` (measurements that arrived after it included), so the
        answer is at least as good as what ``query`` would have said at that moment. The fit
        never straddles a clock step: a ``t`` between the last measurement before a step and
        the first after it gets an answer whose bound covers both sides (which side ``t`` is
        on cannot be known).
        """
        hist = self.history
        if not hist or self.fit is None:
            return self.query(t)
        times = [m.t for m in hist]
        k = bisect.bisect_right(self.steps, t)
        lo = bisect.bisect_left(times, self.steps[k - 1]) if k else 0
        hi = bisect.bisect_left(times, self.steps[k]) if k < len(self.steps) else len(hist)
        if lo >= hi:
            return self.query(t)
        ans = self._at_segment(t, hist, times, lo, hi)
        if ans is not None and hi < len(hist) and t > times[hi - 1]:
            after = self._at_segment(t, hist, times, hi, len(hist))
            if after is not None:  # in the gap where the step happened: cover both sides
                low = min(ans.offset - ans.bound, after.offset - after.bound)
                high = max(ans.offset + ans.bound, after.offset + after.bound)
                return TimeAnswer(t, (low + high) / 2, (high - low) / 2, ans.status,
                                  ans.source, ans.as_of, ans.void_after)
        return ans if ans is not None else self.query(t)

    def _at_segment(self, t: float, hist: tuple[Measurement, ...], times: list[float],
                    seg_lo: int, seg_hi: int) -> TimeAnswer | None:
        """Local fit over the measurements ``hist[seg_lo:seg_hi]`` nearest to ``t``."""
        assert self.fit is not None
        i = bisect.bisect_left(times, t, seg_lo, seg_hi)
        window = max(8, min(32, seg_hi - seg_lo))
        lo = max(seg_lo, i - window // 2)
        hi = min(seg_hi, lo + window)
        lo = max(seg_lo, hi - window)
        local = fit_line(hist[lo:hi], self.fit_config, prior_freq=self.fit.freq)
        if local is None:
            return None
        nearest = min(abs(t - times[j]) for j in range(max(lo, i - 1), min(hi, i + 1)))
        bound = (local.systematic + self.confidence_k * local.bound_stddev(t)
                 + self.max_drift * nearest)
        status = Status.SYNCHRONIZED if nearest <= self.stale_after else Status.FREERUNNING
        return TimeAnswer(t, local.predict(t), bound, status, self.source, local.t_last,
                          local.t_last + self.void_after_s)
