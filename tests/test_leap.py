"""Leap seconds (issue 12 item 3): the engine fits leap-free θ and converts to UTC at the answer.

A simulated host whose reference announces an inserted second (NTP leap indicator 1) for the
end of the UTC day. Kernel behaviour A inserts it too (REALTIME steps back 1 s: δ falls by
1 s), behaviour B does not (REALTIME runs on, 1 s ahead of UTC afterwards). Either way every
answer must hold the true UTC, and the fit must carry on without seeing a step.
"""

from __future__ import annotations

import pytest

from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.leap import LEAP_INSERT, Leap, correction
from chronotickd.core.measurement import Measurement, Status
from chronotickd.core.timebase import ClockReading

LEAP_UTC = 1_798_761_600.0  # a UTC midnight (POSIX)
EPOCH = LEAP_UTC - 5_000.0  # whole seconds
THETA0 = 0.050  # reference − (raw + epoch) before the leap, leap-free
LEAP_RAW = 5_000.0 - THETA0  # raw instant the reference reaches the midnight
POLL = 16.0


def true_utc(raw: float) -> float:
    """POSIX UTC at a raw instant: the continuous scale, one second less from the leap on."""
    u = raw + EPOCH + THETA0
    return u - 1.0 if u >= LEAP_UTC else u


def reading(raw: float, kernel_inserts: bool) -> ClockReading:
    """REALTIME = raw + EPOCH (δ = 0) until the leap; behaviour A steps it back 1 s."""
    delta = -1.0 if kernel_inserts and raw >= LEAP_RAW else 0.0
    return ClockReading(raw, raw + EPOCH + delta, 0.0)


def measure(raw: float) -> Measurement:
    """An NTP reply: θ against UTC as the server serves it, LI set until the leap is past."""
    theta = true_utc(raw) - (raw + EPOCH)
    li = LEAP_INSERT if raw < LEAP_RAW else 0
    return Measurement.from_ntp(raw, theta, 300e-6, source="ntp:a", leap=li)


@pytest.mark.parametrize("kernel_inserts", [True, False])
def test_answers_stay_right_across_an_inserted_leap(kernel_inserts: bool) -> None:
    eng = Engine(EngineConfig(stale_after_s=64), epoch=EPOCH)
    bad, statuses, offsets_after = [], [], []
    raw = 3_000.0
    while raw < 7_000.0:
        eng.observe_clock(reading(raw, kernel_inserts))
        eng.add(measure(raw))
        statuses.append((raw, eng.leap_status(raw)))
        state = eng.snapshot(reading(raw, kernel_inserts))
        for q in (1.0, 8.0, 15.0):
            r = reading(raw + q, kernel_inserts)
            a = state.query(r)
            if abs(true_utc(r.raw) - (a.system_time + a.offset)) > a.bound:
                bad.append((r.raw, a.offset, a.bound))
            if r.raw > LEAP_RAW + 200:
                offsets_after.append(a.offset)
                assert a.status == Status.SYNCHRONIZED and a.bound < 1e-3
        raw += POLL
    assert not bad, f"truth outside the bound at {bad[:4]}"
    track = eng.tracks["ntp:a"]
    assert track.steps == 0 and track.outliers == 0  # the fit never saw the leap
    # kernel inserted: REALTIME is UTC again; it did not: the system clock is 1 s ahead
    want = THETA0 if kernel_inserts else THETA0 - 1.0
    assert offsets_after and all(abs(o - want) < 1e-3 for o in offsets_after)
    assert dict(statuses)[3_000.0] == "insert pending"
    assert statuses[-1][1] == "none"
    assert eng.leaps and eng.leaps[0].confirmed and eng.leaps[0].utc == LEAP_UTC


def test_without_an_announcement_nothing_is_shifted() -> None:
    """The same data without LI: a reference that drops 1 s is a step to be detected."""
    eng = Engine(EngineConfig(stale_after_s=64), epoch=EPOCH)
    raw = 3_000.0
    while raw < 7_000.0:
        m = measure(raw)
        eng.add(Measurement.from_ntp(m.t, m.offset, m.delay, source="ntp:a"))
        raw += POLL
    assert eng.tracks["ntp:a"].steps == 1 and not eng.leaps


def test_references_that_disagree_widen_to_cover_a_smear() -> None:
    """One server announces the leap, another does not (it may smear): near the leap the
    bound holds both the stepped UTC and a 24 h noon-to-noon smear."""
    eng = Engine(EngineConfig(stale_after_s=64), epoch=EPOCH)
    raw = 3_000.0
    while raw < 4_900.0:
        m = measure(raw)
        eng.add(m)
        eng.add(Measurement.from_ntp(raw + 1, m.offset, m.delay, source="ntp:b"))  # no LI
        raw += POLL
    state = eng.snapshot(reading(raw, True))
    assert state.leaps and state.leaps[0].smear_doubt
    for q in (0.0, 60.0, 99.0):
        r = reading(raw + q, True)
        a = state.query(r)
        u = r.raw + EPOCH + THETA0
        smeared = u - (u - (LEAP_UTC - 43_200)) / 86_400  # how a 24 h smear reads then
        for truth in (true_utc(r.raw), smeared):
            assert abs(truth - (a.system_time + a.offset)) <= a.bound
    assert eng.leap_status(raw) == "insert pending"


def test_correction_unconfirmed_covers_both() -> None:
    """Past the leap, until a measurement shows the reference applied it, both UTCs."""
    lp = Leap(raw=100.0, utc=LEAP_UTC, seconds=1)
    assert correction((lp,), 99.0) == (0.0, 0.0)
    assert correction((lp,), 101.0) == (-0.5, 0.5)
    done = Leap(raw=100.0, utc=LEAP_UTC, seconds=1, confirmed=True)
    assert correction((done,), 101.0) == (-1.0, 0.0)
