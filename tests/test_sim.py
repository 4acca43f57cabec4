"""Simulator: deterministic per seed, each scenario shows what it claims, CSV readable by replay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from chronotickd.replay.trace import load_trace
from chronotickd.sim.cli import main as sim_main
from chronotickd.sim.model import ClockModel, simulate
from chronotickd.sim.scenarios import SCENARIOS


def short(name: str, hours: float = 1.0) -> ClockModel:
    return dataclasses.replace(SCENARIOS[name][1], hours=hours)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_deterministic_per_seed(name: str) -> None:
    a = simulate(short(name), 7)
    b = simulate(short(name), 7)
    c = simulate(short(name), 8)
    for x, y in ((a.t, b.t), (a.offset, b.offset), (a.delay, b.delay), (a.truth, b.truth)):
        assert np.array_equal(x, y, equal_nan=True)
    assert not np.array_equal(a.offset, c.offset, equal_nan=True)


def test_drift_slope_and_bound_holds() -> None:
    s = simulate(ClockModel(hours=1.0, freq_ppm=20.0), 1)
    slope = np.polyfit(s.t - s.t[0], s.truth, 1)[0]
    assert slope == pytest.approx(20e-6, rel=1e-6)
    assert np.all(np.abs(s.offset - s.truth) <= s.delay / 2 + 1e-5)  # half RTT covers


def test_scenarios_show_their_feature() -> None:
    out = simulate(SCENARIOS["outage"][1], 1)
    h = (out.t - out.t[0]) / 3600
    assert np.all(np.isnan(out.offset[(h >= 3.6) & (h < 4.3)]))
    assert np.all(np.isfinite(out.truth))
    step = simulate(SCENARIOS["step"][1], 1)
    jumps = np.abs(np.diff(step.truth))
    assert jumps.max() == pytest.approx(5e-3, abs=1e-4)
    spikes = simulate(SCENARIOS["spikes"][1], 1)
    wrong = np.abs(spikes.offset - spikes.truth) > spikes.delay / 2 + 1e-5
    assert 0.005 < wrong.mean() < 0.05  # wrong offsets at a normal delay
    asym = simulate(SCENARIOS["asymmetric"][1], 1)
    assert np.median(asym.offset - asym.truth) > 0.4e-3  # the unobservable bias
    wander = simulate(SCENARIOS["wander"][1], 1)
    freq = np.diff(wander.truth) / np.diff(wander.t)
    assert np.ptp(freq) == pytest.approx(3e-6, rel=0.05)


def test_csv_round_trip_and_cli(tmp_path: Path) -> None:
    out = tmp_path / "mixed.csv"
    assert sim_main(["mixed", str(out), "--hours", "2.5", "--seed", "3"]) == 0
    tr = load_trace(out)  # replay's default columns, truth found automatically
    assert tr.truth_col == "true_offset"
    assert len(tr) == int(2.5 * 3600 / 2) + 1
    assert np.isnan(tr.offset).any()  # losses and the outage are gaps
    direct = simulate(dataclasses.replace(SCENARIOS["mixed"][1], hours=2.5), 3)
    assert np.allclose(tr.truth, direct.truth, atol=1e-9)
    assert tr.delta is not None and np.allclose(tr.delta, direct.delta, atol=1e-9)
    assert sim_main(["mixed", str(tmp_path / "y.csv"), "--hours", "-1"]) == 2


def test_two_clocks_other_daemons_move_the_system_clock_not_the_oscillator() -> None:
    """δ = REALTIME − RAW carries what other processes did; truth = θ − δ."""
    step = simulate(SCENARIOS["step"][1], 1)
    theta = step.truth + step.delta
    assert np.abs(np.diff(step.delta)).max() == pytest.approx(5e-3, abs=1e-9)  # visible in δ
    assert np.abs(np.diff(theta)).max() < 25e-6  # the oscillator did not jump (10 ppm × 2 s)
    hidden = simulate(dataclasses.replace(SCENARIOS["step"][1], step_in_reference=True), 1)
    assert np.allclose(hidden.truth, step.truth) and not hidden.delta.any()
    disc = simulate(SCENARIOS["disciplined"][1], 1)
    assert np.abs(disc.truth).max() <= 100e-6 + 1e-12  # the other daemon's residual
    theta = disc.truth + disc.delta  # the oscillator keeps its own 6 ppm
    rate = np.polyfit(disc.t - disc.t[0], theta, 1)[0]
    assert rate == pytest.approx(-6e-6, abs=0.05e-6)
    plain = simulate(SCENARIOS["drift"][1], 1)
    assert not plain.delta.any()  # nobody touched this system clock
