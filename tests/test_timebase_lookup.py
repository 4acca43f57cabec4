"""The REALTIME↔RAW map's lookups (``delta_at``, ``to_raw``) give exactly what the plain
definitions give (every vertex examined), on maps with steps both ways, slews and merged
segments, with and without a current reading: the bisection and the early end of the walk
over the history are only faster, never different."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from chronotickd.core.timebase import ClockReading, MapPoint, RealtimeMap


def reference_to_raw(m: RealtimeMap, real: float,
                     now: ClockReading | None = None) -> tuple[float, float, float]:
    """The definition: every segment of the map (extended by ``now``) examined, oldest first,
    with no table and no early end (the per-segment arithmetic is ``to_raw``'s own)."""
    pts = m.points
    if now is not None:
        d = now.delta(m.epoch)
        if not pts or now.raw > pts[-1].raw:
            pts = m.add(now.raw, d, now.width).points if pts else (
                MapPoint(now.raw, d, now.width),)
    if not pts:
        return real - m.epoch, real - m.epoch, 0.0
    return m._raw_span(pts, real - m.epoch, range(len(pts) - 1))


def random_map(seed: int, n: int = 1500) -> RealtimeMap:
    """δ read every 16 s: another daemon's frequency updates (kinks), now and then a step
    either way or a fast slew (jumps)."""
    rng = random.Random(seed)
    m = RealtimeMap(epoch=1.7e9)
    raw, delta, rate = 1000.0, 0.0, 3e-6
    for _ in range(n):
        dt = 16.0 + rng.uniform(0.0, 0.5)
        raw += dt
        if rng.random() < 0.2:
            rate += rng.gauss(0, 2e-8)  # a frequency update: a kink within tolerance
        u = rng.random()
        if u < 0.02:
            delta += rng.choice([-1, 1]) * rng.uniform(1e-4, 2.0)  # a step
        elif u < 0.03:
            delta += rng.choice([-1, 1]) * 500e-6 * rng.uniform(1, 15)  # a fast slew
        delta += rate * dt
        m = m.add(raw, delta, rng.uniform(0, 2e-7))
    return m


@pytest.mark.parametrize("seed", range(6))
def test_lookups_equal_their_definitions(seed: int) -> None:
    m = random_map(seed)
    assert sum(p.jump for p in m.points) >= 3, "the map should hold steps"
    rng = random.Random(100 + seed)
    raws = [p.raw for p in m.points]
    instants = [rng.uniform(raws[0] - 500, raws[-1] + 500) for _ in range(300)]
    instants += raws + [r + 1e-3 for r in raws]
    ref = m.deltas_at(np.array(instants))  # the vectorised definition
    for raw, want in zip(instants, ref, strict=True):
        assert m.delta_at(raw) == pytest.approx(float(want), rel=0, abs=1e-12)
    last = m.points[-1]
    nows = [None, ClockReading(last.raw + 30.0, last.raw + 30.0 + m.epoch + last.delta, 1e-7),
            ClockReading(last.raw + 60.0, last.raw + 60.0 + m.epoch + last.delta + 0.5, 0.0)]
    reals = [p.raw + p.delta + m.epoch + off for p in m.points for off in (-0.3, 0.0, 0.7)]
    reals += [rng.uniform(reals[0] - 100, reals[-1] + 100) for _ in range(300)]
    for now in nows:
        for real in reals:
            got, want = m.to_raw(real, now), reference_to_raw(m, real, now)
            assert got == want or all(math.isclose(g, w, rel_tol=0, abs_tol=1e-9)
                                      for g, w in zip(got, want, strict=True)), (real, now)


def test_a_recent_time_does_not_walk_the_whole_history() -> None:
    """Mapping a time from the newest segments stops long before the oldest vertex."""
    m = random_map(7, n=8000)
    seen: list[int] = []

    class Spy(tuple):  # type: ignore[type-arg]
        def __getitem__(self, j):  # type: ignore[no-untyped-def]
            seen.append(j if isinstance(j, int) else -1)
            return tuple.__getitem__(self, j)
    spied = RealtimeMap(m.epoch, Spy(m.points), m.tolerance)
    newest = m.points[-1]
    spied.to_raw(newest.raw - 5.0 + newest.delta + m.epoch)
    segment_reads = [j for j in seen if j >= 0]
    assert len(segment_reads) < 100, f"{len(segment_reads)} vertex reads for a recent time"


def test_last_jump_is_the_newest_jump_vertex() -> None:
    m = random_map(2)
    jumps = [p.raw for p in m.points if p.jump]
    assert jumps and m.last_jump_raw() == jumps[-1]
    assert m.last_jump_raw(before=jumps[-1] - 1e-6) == (jumps[-2] if len(jumps) > 1 else None)
    assert m.last_jump_raw(before=jumps[0] - 1e-6) is None
    assert RealtimeMap().last_jump_raw() is None
