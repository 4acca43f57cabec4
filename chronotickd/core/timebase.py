"""The time base: the reference is modelled against CLOCK_MONOTONIC_RAW; REALTIME only at edges.

CLOCK_MONOTONIC_RAW ("raw") counts the oscillator: nobody slews or steps it. The engine fits
θ(raw) = reference − (raw + epoch) in continuous, leap-free seconds, where ``epoch`` is a
whole number of seconds fixed when the daemon starts (round(REALTIME − RAW) then). The system
clock, CLOCK_REALTIME ("real"), enters only where a measurement is taken or an answer given,
through

    δ = real − raw − epoch

read back to back (real, raw, real: the spread of the two real reads is the read's ``width``).
An answer for a query made at (raw, real) is ``offset_vs_system = θ(raw) − δ``: whatever
chronyd, timesyncd or an operator does to REALTIME changes δ and nothing else.

``RealtimeMap`` keeps the recent history of δ against raw, compressed to a piecewise-linear
curve, so that a *past* system time (``at``) can be mapped back to the raw instant it was
read at. Where REALTIME jumped between two samples the map cannot know when: such a segment is
marked as a jump and a system time inside it maps to every raw instant it may have meant
(both sides of a backward step). Pure: time is passed in.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A float ``real`` near 1.8e9 s is exact to half an ulp (1.2e-7 s); answers add this so that the
# float arithmetic never narrows the promise (the daemon's integer reads are exact).
REAL_FLOAT_SLACK_S = 2.5e-7
# δ samples that a straight line explains within this (+ their read widths) are merged
MAP_TOLERANCE_S = 1e-6
MIN_SPACING_S = 0.1  # unsurprising samples closer than this to the last vertex add nothing


@dataclass(frozen=True, slots=True)
class ClockReading:
    """Both clocks read back to back: ``raw`` (MONOTONIC_RAW, s), ``real`` (REALTIME, s, the
    midpoint of two reads around ``raw``) and ``width`` (their spread, s)."""

    raw: float
    real: float
    width: float = 0.0

    @staticmethod
    def trace(t: float, epoch: float = 0.0) -> ClockReading:
        """A reading on a host whose REALTIME never moved against raw (δ = 0): replay and
        simulation, where ``t`` is the trace's time axis and the epoch 0."""
        return ClockReading(t, t + epoch, 0.0)

    def delta(self, epoch: float) -> float:
        """δ = REALTIME − RAW − epoch at this reading (seconds)."""
        return (self.real - epoch) - self.raw


def delta_ns(raw_ns: int, real_ns: int, epoch_ns: int) -> float:
    """δ in seconds from integer nanosecond reads: exact, no float cancellation."""
    return (real_ns - raw_ns - epoch_ns) * 1e-9


def as_reading(x: ClockReading | float, epoch: float = 0.0) -> ClockReading:
    """``x`` itself, or for a plain float the δ = 0 reading ``ClockReading.trace(x, epoch)``."""
    return x if isinstance(x, ClockReading) else ClockReading(x, x + epoch, 0.0)


@dataclass(frozen=True, slots=True)
class MapPoint:
    """One vertex of the δ(raw) curve. ``jump``: REALTIME stepped (or changed its rate beyond
    what the previous samples explain) somewhere between the previous vertex and this one."""

    raw: float
    delta: float
    width: float = 0.0
    jump: bool = False


@dataclass(frozen=True, slots=True)
class RealtimeMap:
    """Immutable piecewise-linear history of δ against raw (see the module docstring).

    ``points`` are sorted by raw. Between two vertices δ is linear unless the later one is a
    ``jump``. Before the first vertex δ is taken as constant (nothing is known about earlier
    steps: the daemon was not watching); after the last one, too, unless the caller supplies a
    newer reading (``to_raw(..., now=reading)``).
    """

    epoch: float = 0.0
    points: tuple[MapPoint, ...] = ()
    tolerance: float = MAP_TOLERANCE_S
    # lookup tables derived from ``points`` on first use (the map is immutable): reading it
    # (``delta_at``, ``to_raw``: an `at` request) then costs a bisection, not a walk over
    # every vertex of the history
    _cache: dict[str, Any] = field(init=False, default_factory=dict, repr=False,
                                   compare=False)

    # -- building ---------------------------------------------------------------------
    @staticmethod
    def _slope(a: MapPoint, b: MapPoint) -> float:
        dt = b.raw - a.raw
        return (b.delta - a.delta) / dt if dt > 0 else 0.0

    def rate(self) -> float:
        """The current rate of δ (s/s) from the newest non-jump segment, 0 if none."""
        p = self.points
        if len(p) < 2 or p[-1].jump:
            return 0.0
        return self._slope(p[-2], p[-1])

    def surprise(self, raw: float, delta: float, width: float = 0.0) -> float:
        """How far ``delta`` at ``raw`` is from what the recent rate predicts (0: explained).

        After a jump segment two continuations are plausible: the change is over (a step:
        back to the rate before it, or 0) or it goes on (a slew: the jump segment's rate).
        Either one explains the sample.
        """
        p = self.points
        if not p:
            return 0.0
        last = p[-1]
        ahead = raw - last.raw
        # (rate, its uncertainty from the read widths over the segment it comes from)
        cands = [(0.0, 0.0)] if len(p) < 2 or last.jump else [self._rated(p[-2], last)]
        if len(p) >= 2 and last.jump:
            cands.append(self._rated(p[-2], last))
            if len(p) >= 3 and not p[-2].jump:
                cands.append(self._rated(p[-3], p[-2]))
        slack = self.tolerance + (width + last.width) / 2
        best = math.inf
        for rate, sigma in cands:
            err = delta - (last.delta + rate * ahead)
            if abs(err) <= slack + sigma * ahead:
                return 0.0
            best = err if abs(err) < abs(best) else best
        return best

    def _rated(self, a: MapPoint, b: MapPoint) -> tuple[float, float]:
        dt = b.raw - a.raw
        if dt <= 0:
            return 0.0, math.inf
        return (b.delta - a.delta) / dt, (2 * self.tolerance + a.width + b.width) / dt

    def add(self, raw: float, delta: float, width: float = 0.0,
            keep_after: float | None = None, max_points: int = 4096) -> RealtimeMap:
        """The map with one more sample; vertices older than ``keep_after`` (raw) dropped
        (one is kept before it so the window's start stays covered)."""
        pts = list(self.points)
        if pts and raw <= pts[-1].raw:
            return self  # out of order: the map only moves forward
        jump = bool(pts) and self.surprise(raw, delta, width) != 0.0
        if pts and not jump and raw - pts[-1].raw < MIN_SPACING_S:
            return self  # nothing new, and a vertex this close would make a noisy rate
        if (not jump and len(pts) >= 2 and not pts[-1].jump
                and self._on_line(pts[-2], raw, delta, width, pts[-1])):
            pts[-1] = MapPoint(raw, delta, max(width, pts[-1].width))  # extend the segment
        else:
            pts.append(MapPoint(raw, delta, width, jump))
        if keep_after is not None:
            k = bisect.bisect_left([p.raw for p in pts], keep_after)
            pts = pts[max(0, k - 1):]
        if len(pts) > max_points:
            pts = pts[-max_points:]
        return RealtimeMap(self.epoch, tuple(pts), self.tolerance)

    def _on_line(self, a: MapPoint, raw: float, delta: float, width: float,
                 mid: MapPoint) -> bool:
        """Would dropping ``mid`` keep it within tolerance of the line a → (raw, delta)?"""
        if raw <= a.raw:
            return False
        predicted = a.delta + (delta - a.delta) * (mid.raw - a.raw) / (raw - a.raw)
        return abs(mid.delta - predicted) <= self.tolerance + max(width, mid.width) / 2

    def settled_rate(self, max_rate: float, span: float = 600.0,
                     min_span: float = 30.0) -> float | None:
        """δ's mean rate (s/s) over the newest ``span`` seconds in which no segment moved
        faster than ``max_rate``: how fast whoever disciplines REALTIME moves it against the
        oscillator (0 where nobody does), its frequency updates (kinks) included but not its
        steps and fast slews. None when less than ``min_span`` of such history is known."""
        p = self.points
        if len(p) < 2:
            return None
        last = p[-1]
        first = last
        for q in reversed(p[:-1]):
            if abs(self._slope(q, first)) > max_rate:
                break
            first = q
            if last.raw - q.raw >= span:  # (a merged segment may reach further back: fine,
                break                     # δ was linear all along it)
        if last.raw - first.raw < min_span:
            return None
        return self._slope(first, last)

    # -- reading ------------------------------------------------------------------------
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw, δ, jump) of the vertices as arrays, made once per map."""
        got = self._cache.get("arrays")
        if got is None:
            p = self.points
            got = self._cache["arrays"] = (
                np.fromiter((q.raw for q in p), float, len(p)),
                np.fromiter((q.delta for q in p), float, len(p)),
                np.fromiter((q.jump for q in p), bool, len(p)))
        return got

    def _raws(self) -> list[float]:
        """The vertices' raw instants as a list (for ``bisect``), made once per map."""
        got = self._cache.get("raws")
        if got is None:
            got = self._cache["raws"] = [q.raw for q in self.points]
        return got

    def _reach(self) -> list[float]:
        """For each segment j (vertices j, j+1): the latest system time (as real − epoch) shown
        in segments 0..j. ``to_raw`` stops looking back once no earlier segment reaches the
        time it maps."""
        got = self._cache.get("reach")
        if got is None:
            got = []
            top = -math.inf
            for a, b in itertools.pairwise(self.points):
                top = max(top, b.raw + max(a.delta, b.delta))
                got.append(top)
            self._cache["reach"] = got
        return got

    def last_jump_raw(self, before: float = math.inf) -> float | None:
        """The raw instant by which REALTIME last jumped (a step, or a change of rate the
        samples before did not explain: a ``jump`` vertex), the newest at or before
        ``before``; None: none seen."""
        jumps = self._cache.get("jumps")
        if jumps is None:
            jumps = self._cache["jumps"] = [q.raw for q in self.points if q.jump]
        i = bisect.bisect_right(jumps, before)
        return jumps[i - 1] if i else None

    def deltas_at(self, raws: np.ndarray) -> np.ndarray:
        """``delta_at`` for many raw instants at once (the engine's window of samples)."""
        raws = np.asarray(raws, dtype=float)
        p = self.points
        if not p:
            return np.zeros(len(raws))
        xs, ys, jumps = self._arrays()
        i = np.searchsorted(xs, raws, side="right")
        out = np.interp(raws, xs, ys)  # constant outside, linear between vertices
        inside = (i > 0) & (i < len(p))
        in_jump = inside & jumps[np.minimum(i, len(p) - 1)]
        out[in_jump] = ys[i[in_jump] - 1]  # a jump segment: as before the jump until its end
        return out

    def delta_at(self, raw: float) -> float:
        """δ at a raw instant (linear between vertices; a jump segment counts as before the
        jump until its end: the step's time is unknown). ``deltas_at`` of one instant."""
        p = self.points
        if not p:
            return 0.0
        i = bisect.bisect_right(self._raws(), raw)
        if i == 0:
            return p[0].delta
        if i == len(p):
            return p[-1].delta
        a, b = p[i - 1], p[i]
        if b.jump:
            return a.delta
        return a.delta + (b.delta - a.delta) * (raw - a.raw) / (b.raw - a.raw)

    def to_raw(self, real: float, now: ClockReading | None = None) -> tuple[float, float, float]:
        """(lowest, highest raw instant a system time ``real`` may have been read at, slack).

        Usually lowest == highest. Across a jump segment it is the span of every reading
        consistent with the map: after a backward step a system time was shown twice, before
        and after, and both are covered. ``slack`` is the map's own uncertainty in raw
        seconds (tolerance + read widths), for the caller to add to its bound.

        Segments are examined newest first, and the walk ends at the first one before which
        no segment reaches ``real`` (``_reach``): a recent time costs a few segments however
        long the history.
        """
        own = self.points
        pts = own
        if now is not None:
            d = now.delta(self.epoch)
            if not pts or now.raw > pts[-1].raw:
                pts = self.add(now.raw, d, now.width).points if pts else (
                    MapPoint(now.raw, d, now.width),)
        if not pts:
            return real - self.epoch, real - self.epoch, 0.0
        # segments 0..shared-1 are this map's own (reading ``now`` changes only the newest
        # vertex or adds one), so their reach is known
        shared = 0
        if own and pts[0] is own[0]:
            k = min(len(pts), len(own))
            shared = max(0, k - 1 if pts[k - 1] is own[k - 1] else k - 2)
        reach = self._reach() if shared else []
        base = real - self.epoch

        def newest_first() -> Iterator[int]:
            for seg in range(len(pts) - 2, -1, -1):
                if seg < shared and reach[seg] < base:
                    return  # no segment at or before seg showed a time as late as ``real``
                yield seg
        return self._raw_span(pts, base, newest_first())

    def _raw_span(self, pts: tuple[MapPoint, ...], base: float,
                  segments: Iterable[int]) -> tuple[float, float, float]:
        """``to_raw``'s answer for the system time ``base`` (real − epoch) on the vertices
        ``pts``, examining the segments (j: vertices j, j+1) ``segments`` names, plus the
        times before the first vertex and after the last."""
        cands: list[float] = []
        widths = [pts[0].width]
        if base - pts[0].delta <= pts[0].raw:
            cands.append(base - pts[0].delta)
        for j in segments:
            a, b = pts[j], pts[j + 1]
            if b.jump:
                # δ went from a.delta to b.delta at unknown instants of the segment (a step,
                # or a slew's start): every raw with base − raw between the two is possible,
                # including, for a forward step, times the clock skipped (never shown)
                lo = max(a.raw, base - max(a.delta, b.delta))
                hi = min(b.raw, base - min(a.delta, b.delta))
                if lo <= hi:
                    cands.extend((lo, hi))
                    widths.append(max(a.width, b.width))
            else:
                slope = (b.delta - a.delta) / (b.raw - a.raw)
                r = a.raw + (base - a.raw - a.delta) / (1.0 + slope)
                if a.raw <= r <= b.raw:
                    cands.append(r)
                    widths.append(max(a.width, b.width))
        last = pts[-1]
        if base - last.delta >= last.raw:
            cands.append(base - last.delta)
            widths.append(last.width)
        if not cands:  # cannot happen for a consistent map; stay honest anyway
            cands = [base - p.delta for p in pts]
        return min(cands), max(cands), self.tolerance + max(widths) / 2

    def to_real(self, raw: float) -> float:
        """The system time REALTIME showed at a raw instant (per the map)."""
        return raw + self.epoch + self.delta_at(raw)
