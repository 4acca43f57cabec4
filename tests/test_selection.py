"""Engine selection across sources: best bound wins, hysteresis, liveness-driven failover."""

from __future__ import annotations

from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement
from chronotickd.core.state import TrackSummary

PTP, NTP = "ptp:/run/ptp4l", "ntp:127.0.0.1:123"


def feed(engine: Engine, t0: float, t1: float, step: float, source: str, kind: str,
         bound: float, offset: float = 1e-4) -> None:
    t = t0
    while t <= t1:
        engine.add(Measurement(t, offset, bound, bound, source=source, kind=kind))
        t += step


def summary(engine: Engine, now: float, name: str) -> TrackSummary:
    return next(t for t in engine.snapshot(now).tracks if t.name == name)


def test_tighter_source_selected_and_failover_on_liveness() -> None:
    e = Engine()
    feed(e, 0, 30, 2, NTP, "ntp", 100e-6)
    feed(e, 0, 30, 1, PTP, "ptp", 3e-6)
    assert e.snapshot(30.5).source == "ptp"
    # ptp4l lost its master: the source says so; selection moves at once, not after 64 s
    e.mark_unusable(PTP, "no master: port LISTENING")
    state = e.snapshot(31.0)
    assert state.source == "ntp"
    row = summary(e, 31.0, PTP)
    assert not row.usable and row.reason == "unusable: no master: port LISTENING"
    assert summary(e, 31.0, NTP).selected
    # master back: fresh samples and the source's all-clear return the selection to PTP
    feed(e, 40, 46, 1, PTP, "ptp", 3e-6)
    feed(e, 32, 46, 2, NTP, "ntp", 100e-6)
    assert e.snapshot(46.5).source == "ntp"  # still marked: no return yet
    e.mark_usable(PTP)
    assert e.snapshot(46.5).source == "ptp"


def test_hysteresis_keeps_current_source() -> None:
    e = Engine()
    feed(e, 0, 20, 1, NTP, "ntp", 10e-6)
    assert e.snapshot(20.5).source == "ntp"
    feed(e, 0, 20, 1, PTP, "ptp", 8e-6)  # better, but not by switch_ratio
    assert e.snapshot(20.5).source == "ntp"
    feed(e, 21, 40, 1, PTP, "ptp", 1e-6)  # now far tighter
    feed(e, 21, 40, 1, NTP, "ntp", 10e-6)
    assert e.snapshot(40.5).source == "ptp"


def test_silent_source_without_liveness_signal_fails_over_after_floor() -> None:
    e = Engine()
    feed(e, 0, 40, 1, PTP, "ptp", 1e-6)
    feed(e, 0, 40, 2, NTP, "ntp", 100e-6)
    assert e.snapshot(40.5).source == "ptp"
    feed(e, 42, 60, 2, NTP, "ntp", 100e-6)  # PTP silent since t=40
    assert e.snapshot(49).source == "ptp"  # within the failover floor (10 s)
    assert e.snapshot(51).source == "ntp"
    assert summary(e, 51, PTP).reason == "silent (failover)"


def test_dead_only_source_still_served_freerunning() -> None:
    e = Engine()
    feed(e, 0, 20, 1, PTP, "ptp", 1e-6)
    e.mark_unusable(PTP, "master silent")
    state = e.snapshot(21)
    assert state.source == "ptp"  # nothing better: old fit, bound growing with age
    row = summary(e, 21, PTP)
    assert row.selected and "serving freerunning" in row.reason


def test_equal_bounds_prefer_ptp() -> None:
    e = Engine()
    feed(e, 0, 20, 1, NTP, "ntp", 5e-6)
    feed(e, 0, 20, 1, PTP, "ptp", 5e-6)
    e.selected = None
    assert e.snapshot(20.5).source == "ptp"
