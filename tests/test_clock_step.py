"""Steps: the pure Engine, time passed in.

``run``: the *measured* offset steps (the reference jumps against the oscillator, or a trace
recorded on a stepped clock): the track must detect it and keep the bound honest meanwhile.

``Host``: the time base (issue 12). The fit is on CLOCK_MONOTONIC_RAW; REALTIME steps and slews
change only δ = REALTIME − RAW − epoch, which the engine observes (``observe_clock``) and the
answers subtract. The true time is known at every instant, so every answer is checked.
"""

from __future__ import annotations

import random

import pytest

from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.measurement import Measurement, Status
from chronotickd.core.timebase import ClockReading

POLL = 1.0


def run(step: float, seed: int = 1) -> tuple[Engine, list[tuple[float, float, object]]]:
    rng = random.Random(seed)
    eng = Engine(EngineConfig(stale_after_s=8))
    answers = []
    true_t = 1_000.0
    stepped_at = 60.0
    for i in range(120):
        true_t = 1_000.0 + i * POLL
        shift = step if i * POLL >= stepped_at else 0.0
        system_t = true_t + shift
        delay = 200e-6 + rng.random() * 100e-6
        noise = (rng.random() - 0.5) * 0.2 * delay  # well inside delay/2
        eng.add(Measurement.from_ntp(system_t, -shift + noise, delay, source="ntp:a"))
        for q in (0.1, 0.5, 0.9):  # queries between this sample and the next
            state = eng.snapshot(system_t + q)
            answers.append((i * POLL + q, -shift, state.query(system_t + q)))
    return eng, answers


@pytest.mark.parametrize("step", [0.2, -0.05, 2.0])
def test_step_is_detected_and_bound_stays_honest(step: float) -> None:
    eng, answers = run(step)
    assert eng.tracks["ntp:a"].steps == 1
    bad = [(t, true, a.offset, a.bound) for t, true, a in answers
           if abs(true - a.offset) > a.bound]
    assert not bad, f"truth outside the bound at {bad[:3]}"
    # after confirmation the answer follows the new offset with a tight bound again
    _t, true, last = answers[-1]
    assert last.status == Status.SYNCHRONIZED and abs(last.offset - true) < 1e-3
    assert last.bound < 5e-3
    # while unconfirmed, the bound widened to cover both readings of the data
    during = [a.bound for t, _, a in answers if 60 <= t < 60 + 3 * POLL]
    assert max(during) >= abs(step)


def test_no_step_keeps_tight_bound() -> None:
    eng, answers = run(0.0)
    assert eng.tracks["ntp:a"].steps == 0
    assert all(abs(true - a.offset) <= a.bound for _, true, a in answers)
    assert answers[-1][2].bound < 2e-3


EPOCH = 1_700_000_000.0


class Host:
    """A simulated host on the new time base: raw counts true seconds × (1 − 20 ppm) from 50 ms
    behind; REALTIME = raw + EPOCH + δ, where δ is whatever "another daemon" makes it."""

    def __init__(self) -> None:
        self.delta = 0.0

    @staticmethod
    def theta(raw: float) -> float:  # reference − (raw + EPOCH)
        return 0.050 + 20e-6 * raw

    def reading(self, raw: float) -> ClockReading:
        return ClockReading(raw, raw + EPOCH + self.delta, 0.0)


def test_realtime_steps_and_slews_leave_the_fit_alone_and_answers_right() -> None:
    """+20 ms step, a −0.5 ms step, then a −10 ms slew at 500 ppm: the fit (on raw) never
    sees them, every answer holds the truth with a tight bound, and each change is counted
    as it is observed."""
    host = Host()
    rng = random.Random(5)
    eng = Engine(EngineConfig(stale_after_s=8), epoch=EPOCH)
    bad, bounds, steps = [], [], []
    for i in range(300):
        raw = 100.0 + i * POLL
        if i == 100:
            host.delta += 0.020
        if i == 150:
            host.delta -= 0.0005
        if 200 <= i < 220:  # slewing: −500 µs per second
            host.delta -= 500e-6
        got = eng.observe_clock(host.reading(raw))
        if got is not None:
            steps.append((i, got))
        noise = (rng.random() - 0.5) * 50e-6
        eng.add(Measurement.from_ntp(raw, host.theta(raw) + noise, 250e-6, source="ntp:a"))
        state = eng.snapshot(host.reading(raw))
        for q in (0.1, 0.9):
            r = host.reading(raw + q)
            a = state.query(r)
            true_time = r.raw + EPOCH + host.theta(r.raw)
            if abs(true_time - (a.system_time + a.offset)) > a.bound:
                bad.append((i, q))
            if i > 50:
                bounds.append(a.bound)
    assert not bad, f"truth outside the bound at {bad[:5]}"
    assert max(bounds) < 1e-3  # the steps and the slew never widened anything
    track = eng.tracks["ntp:a"]
    assert track.steps == 0 and track.outliers == 0
    # observed, not guessed: the +20 ms and the −0.5 ms step, the slew's start (and end)
    assert [i for i, _ in steps][:3] == [100, 150, 200]
    assert steps[0][1] == pytest.approx(0.020, abs=1e-6)
    assert steps[1][1] == pytest.approx(-0.0005, abs=1e-6)
    assert eng.realtime_steps == len(steps) >= 3


def test_at_maps_a_system_time_across_a_backward_step() -> None:
    """REALTIME steps back 2 s: a system time from before the step is answered right, and one
    that was shown twice (before and after) gets a bound covering both instants."""
    host = Host()
    eng = Engine(EngineConfig(stale_after_s=8), epoch=EPOCH)
    for i in range(200):
        raw = 100.0 + i * POLL
        if i == 120:
            host.delta -= 2.0
        eng.observe_clock(host.reading(raw))
        eng.add(Measurement.from_ntp(raw, host.theta(raw), 250e-6, source="ntp:a"))
    now = host.reading(100.0 + 200 * POLL)
    state = eng.snapshot(now)
    # before the step, not ambiguous: raw 150.3 showed REALTIME raw + EPOCH
    sys_t = 150.3 + EPOCH
    a = state.at(sys_t, now)
    true_time = 150.3 + EPOCH + host.theta(150.3)
    assert abs(true_time - (sys_t + a.offset)) <= a.bound < 1e-3
    # shown twice: at raw 219.5 (δ 0) and at raw 221.5 (δ −2 s, after the step at ~220)
    sys_t = 219.5 + EPOCH
    a = state.at(sys_t, now)
    for raw in (219.5, 221.5):
        true_time = raw + EPOCH + host.theta(raw)
        assert abs(true_time - (sys_t + a.offset)) <= a.bound
    assert a.bound < 1.5  # the two instants, not more
    # after the step: REALTIME = raw + EPOCH − 2
    sys_t = 280.0 + EPOCH - 2.0
    a = state.at(sys_t, now)
    true_time = 280.0 + EPOCH + host.theta(280.0)
    assert abs(true_time - (sys_t + a.offset)) <= a.bound < 1e-3
