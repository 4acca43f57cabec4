"""A system-clock step seen through the injected clock: the pure Engine, time passed in.

The simulated host's system clock reads true time until it is stepped by ``STEP`` seconds;
from then on every measurement's offset (reference − system) is ``−STEP``. Queries are made
at the system time the stepped clock shows. The true offset is known at every instant, so
the test checks ``|true − answer| ≤ bound`` for every query after the first post-step sample.
"""

from __future__ import annotations

import random

import pytest

from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.measurement import Measurement, Status

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


class SimClocks:
    """Injected clocks of a simulated host: monotonic never jumps, realtime can be stepped."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.step = 0.0

    def realtime(self, true_t: float) -> float:
        return true_t + self.step


def test_step_seen_through_injected_clocks_is_absorbed() -> None:
    """The caller sees realtime − monotonic jump and tells the engine: no outliers, no
    re-learning, the bound stays tight and honest at once."""
    clocks = SimClocks()
    rng = random.Random(3)
    eng = Engine(EngineConfig(stale_after_s=8))
    step = 0.5
    last_diff = None
    bad = []
    for i in range(120):
        true_t = 1_000.0 + i * POLL
        if i == 60:
            clocks.step = step
        diff = clocks.realtime(true_t) - (clocks.mono + i * POLL)  # what the daemon reads
        if last_diff is not None and abs(diff - last_diff) > 1e-3:
            eng.clock_stepped(diff - last_diff)
        last_diff = diff
        system_t = clocks.realtime(true_t)
        delay = 250e-6
        noise = (rng.random() - 0.5) * 50e-6
        eng.add(Measurement.from_ntp(system_t, -clocks.step + noise, delay, source="ntp:a"))
        for q in (0.1, 0.9):
            a = eng.snapshot(system_t + q).query(system_t + q)
            if abs(-clocks.step - a.offset) > a.bound:
                bad.append((i, a.offset, a.bound))
            if i >= 60:
                assert a.bound < 2e-3  # no widening: nothing looked like an outlier
    assert not bad
    track = eng.tracks["ntp:a"]
    assert track.steps == 0 and track.outliers == 0
