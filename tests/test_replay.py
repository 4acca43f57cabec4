"""Replay bench: scoring, methods, the engine's path, CLI shape, and the engine's accuracy goals.

The engine-accuracy tests replay the issue's cases (synced_tacc at 64 s, every simulator
scenario) and assert the goals of issue 3, so a change to the core that loses them fails here.
"""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement
from chronotickd.replay import methods as methods_mod
from chronotickd.replay.cli import main as replay_main
from chronotickd.replay.methods import BASELINES, CLASSICAL, METHODS, ReplayMethod, make_method
from chronotickd.replay.metrics import METRIC_KEYS, score
from chronotickd.replay.results import data_dir, goal_check
from chronotickd.replay.runner import poll_rows, replay
from chronotickd.replay.trace import Trace, load_trace
from chronotickd.replay.truth import centered_median
from chronotickd.sim.model import ClockModel, SimTrace, simulate
from chronotickd.sim.scenarios import SCENARIOS

TACC = data_dir() / "synced_tacc.csv"


def make_trace(t: np.ndarray, offset: np.ndarray, delay: np.ndarray,
               truth: np.ndarray | None) -> Trace:
    return Trace("mem", t, offset, delay, truth, "true_offset" if truth is not None else None)


def linear_trace(hours: float = 2.0, noise: float = 20e-6, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, hours * 3600.0, 2.0) + 1000.0
    truth = 1e-3 + 20e-6 * (t - t[0])
    return make_trace(t, truth + rng.normal(0, noise, len(t)), np.full(len(t), 1e-3), truth)


# -- metrics -----------------------------------------------------------------------------------
def test_coverage_and_errors_on_hand_made_case() -> None:
    truth = np.array([0.0, 0.0, 0.0, 0.0])
    offset = np.array([0.1, -0.2, 0.3, -0.4])
    bound = np.array([0.1, 0.1, 0.5, 0.3])  # inside (edge), outside, inside, outside
    m = score(offset, bound, truth)
    assert m["coverage"] == pytest.approx(0.5)
    assert m["mae_s"] == pytest.approx(0.25)
    assert m["max_s"] == pytest.approx(0.4)
    assert m["mean_bound_s"] == pytest.approx(0.25)
    assert m["n"] == 4
    assert m["p99_s"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 99))
    assert set(m) == set(METRIC_KEYS)


def test_coverage_of_a_method_with_known_answers() -> None:
    """A method that is always 1 ms off with a 1.5 ms bound covers everything; with 0.5 ms
    nothing; scored rows are exactly the non-poll rows."""

    class Off:
        def __init__(self, name: str, b: float) -> None:
            self.name, self.b = name, b

        def observe(self, m: Measurement) -> None:
            pass

        def answer(self, t: float) -> tuple[float, float]:
            return 1e-3, self.b

    t = np.arange(0.0, 600.0, 2.0)
    tr = make_trace(t, np.zeros(len(t)), np.full(len(t), 1e-3), np.zeros(len(t)))
    METHODS["wide"] = lambda: Off("wide", 1.5e-3)
    METHODS["narrow"] = lambda: Off("narrow", 0.5e-3)
    try:
        res = replay(tr, 60.0, ["wide", "narrow"])
    finally:
        del METHODS["wide"], METHODS["narrow"]
    assert res.runs["wide"].metrics["coverage"] == 1.0
    assert res.runs["narrow"].metrics["coverage"] == 0.0
    assert res.runs["wide"].metrics["n"] == len(t) - 10  # 10 polls in 600 s at 60 s
    assert res.runs["wide"].metrics["mae_s"] == pytest.approx(1e-3)


def test_poll_rows_one_per_slot_and_gaps() -> None:
    t = np.array([0.0, 2.0, 4.0, 10.0, 11.0, 25.0])
    p = poll_rows(t, np.zeros(len(t)), 5.0)
    assert p.tolist() == [True, False, False, True, False, True]


def test_centered_median_uses_only_held_out_rows() -> None:
    t = np.arange(0.0, 200.0, 2.0)
    off = np.zeros(len(t))
    off[::8] = 1.0  # "polled" rows carry a different value
    held = np.ones(len(t), bool)
    held[::8] = False
    ref = centered_median(t, off, held)
    assert np.nanmax(ref) == 0.0
    assert np.isnan(centered_median(t[:3], off[:3], held[:3])).all()  # too few samples


# -- methods -----------------------------------------------------------------------------------
def test_registry_and_protocol() -> None:
    for name in (*CLASSICAL, "chronos-short", "chronos-long", "fused"):
        assert name in METHODS
    for name in CLASSICAL:
        m = make_method(name)
        assert isinstance(m, ReplayMethod)
        assert m.name == name
        off, b = m.answer(0.0)
        assert math.isfinite(off) and b > 0  # before any measurement: a wide honest answer


def test_missing_forecaster_is_reported_and_run_continues(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(methods_mod, "FORECAST_MODULE", "chronotickd._no_such_forecaster")
    tr = linear_trace(hours=0.5)
    res = replay(tr, 64.0, ["engine", "chronos-short", "fused"])
    assert "engine" in res.runs
    assert set(res.unavailable) == {"chronos-short", "fused"}
    assert "No module named" in res.unavailable["fused"]
    assert res.to_json()["unavailable"]["fused"]


def test_default_method_follows_forecaster_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods_mod, "FORECAST_MODULE", "chronotickd._no_such_forecaster")
    assert methods_mod.default_method() == "engine"
    fake = types.ModuleType("fake_forecaster")
    fake.DEFAULT_ON = True  # type: ignore[attr-defined]
    fake.__spec__ = types.SimpleNamespace(name="fake_forecaster")  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "fake_forecaster", fake)
    monkeypatch.setattr(methods_mod, "FORECAST_MODULE", "fake_forecaster")
    monkeypatch.setattr(methods_mod.importlib.util, "find_spec", lambda name: object())
    assert methods_mod.default_method() == "fused"
    fake.DEFAULT_ON = False  # type: ignore[attr-defined]
    assert methods_mod.default_method() == "engine"


def test_engine_method_is_the_daemon_path_and_snapshot_cadence_does_not_matter() -> None:
    """Replay snapshots once per poll; the daemon at least every second. Same answers."""
    tr = load_sim("mixed", hours=1.5)
    polled = poll_rows(tr.t, tr.offset, 64.0)
    em = make_method("engine")
    daemon = Engine()
    state = daemon.snapshot(tr.t[0])
    for i in range(len(tr.t)):
        if polled[i]:
            if math.isfinite(tr.offset[i]):
                m = Measurement.from_ntp(tr.t[i], tr.offset[i], tr.delay[i])
                em.observe(m)
                daemon.add(m)
                state = daemon.snapshot(tr.t[i])
            continue
        state = daemon.snapshot(tr.t[i])  # republish every row, as the daemon's timer does
        a = state.query(tr.t[i])
        assert em.answer(tr.t[i]) == (a.offset, a.bound)


# -- properties the engine must show -----------------------------------------------------------
def test_pure_linear_drift_is_tracked_within_noise() -> None:
    noise = 20e-6
    res = replay(linear_trace(noise=noise), 64.0, ["engine"])
    run = res.runs["engine"]
    err = np.abs(run.offset - res.truth[res.scored])
    settled = err[200:]  # after the first few polls
    assert np.median(settled) < noise  # averaging beats a single measurement
    assert np.percentile(settled, 99) < 3 * noise
    assert run.metrics["coverage"] >= 0.99


def test_outage_widens_the_bound_and_still_covers() -> None:
    tr = linear_trace(hours=3.0)
    off = tr.offset.copy()
    h = (tr.t - tr.t[0]) / 3600
    out = (h >= 1.0) & (h < 1.5)
    off[out] = np.nan
    res = replay(make_trace(tr.t, off, tr.delay, tr.truth), 64.0, ["engine"])
    run = res.runs["engine"]
    hs = h[res.scored]
    before = run.bound[(hs > 0.8) & (hs < 1.0)]
    during = run.bound[(hs >= 1.0) & (hs < 1.5)]
    assert during.max() > 2 * before.max()
    assert np.all(np.diff(during) >= -1e-12)  # grows with age while nothing arrives
    err = np.abs(run.offset - res.truth[res.scored])[(hs >= 1.0) & (hs < 1.5)]
    assert np.all(err <= during)


def test_progress_bar_goes_to_the_given_stream() -> None:
    buf = io.StringIO()
    replay(linear_trace(hours=0.5), 64.0, ["hold", "engine"], progress=True, stream=buf)
    assert "100.0%" in buf.getvalue() and "[" in buf.getvalue()


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "drift.csv"
    simulate(ClockModel(hours=1.0, freq_ppm=5.0), 3).write_csv(csv_path)
    out = tmp_path / "r.json"
    plot = tmp_path / "r.png"
    rc = replay_main([str(csv_path), "--poll", "32", "--json", str(out), "--plot", str(plot),
                      "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"trace", "poll_s", "default_method", "methods"}
    assert doc["poll_s"] == 32.0
    assert doc["default_method"] in doc["methods"]
    assert set(doc["methods"]) >= set(CLASSICAL)
    for m in doc["methods"].values():
        assert set(m) == {"mae_s", "p95_s", "p99_s", "max_s", "coverage", "mean_bound_s", "n"}
    printed = capsys.readouterr().out
    assert "coverage" in printed and "rows/s" in printed
    assert plot.stat().st_size > 10_000


def test_cli_names_missing_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    assert replay_main([str(p)]) == 2
    assert "--time-col" in capsys.readouterr().err


# -- the accuracy goals ----------------------------------------------------------------
def load_sim(name: str, hours: float | None = None, seed: int = 1) -> Trace:
    model = SCENARIOS[name][1]
    if hours is not None:
        import dataclasses

        model = dataclasses.replace(model, hours=hours)
    s = simulate(model, seed)
    return make_trace(s.t, s.offset, s.delay, s.truth)


@pytest.mark.skipif(not TACC.exists(), reason=f"{TACC} not present (set CHRONOTICK_DATA_DIR)")
def test_engine_goals_on_synced_tacc_poll_64() -> None:
    res = replay(load_trace(TACC), 64.0, [*BASELINES, "engine"])
    ok, detail = goal_check(res, recorded=True)
    assert ok, detail


@pytest.mark.skipif(not TACC.exists(), reason=f"{TACC} not present (set CHRONOTICK_DATA_DIR)")
@pytest.mark.parametrize("poll", [150.0, 180.0])
def test_a_minority_route_does_not_take_the_estimate(poll: float) -> None:
    """The real trace has two routes: about 12 % of the replies come 2 ms faster with
    offsets 1 ms lower, and 15 % lie on the line between (one-leg queueing). At 150 s and
    180 s polls stretches of 8–16 polls hold as many fast replies as typical ones, and the
    estimate followed the minority for hours (0.147 and 0.313 ms, coverage 0.990 and 0.994,
    against the median of 8's 0.108 and 0.113 ms). Now no window's reference delay sinks
    below the track's typical delay, and a reply faster than the typical delay's spread
    explains weighs as one queued by the difference (``estimator.delay_weights``)."""
    res = replay(load_trace(TACC), poll, [*BASELINES, "engine"])
    ok, detail = goal_check(res, recorded=True)
    assert ok, detail
    assert res.runs["engine"].metrics["coverage"] >= 0.999
    # and not by a bound that gave up: a window of 8 whose robust pass kept one sample once
    # served a 1.2 s bound here (mean 15 ms at 180 s); with both routes' offsets ~1 ms apart
    # and delays up to 3 ms, a few ms is what an honest bound needs
    assert res.runs["engine"].metrics["mean_bound_s"] < 5e-3


def test_a_noisy_disciplined_host_is_not_locked_out_by_a_short_windows_scale() -> None:
    """A host another daemon keeps within ±1 ms, measured over a path with 2 ms of queueing
    (the held-out ``disc-internet`` clock, seed 302) at 100 s polls. A window of 8 whose
    delay weights sat on one or two replies claimed a noise scale of a few µs; against it
    every reply was an outlier for 50 minutes while the estimate drifted 4 ms on a wrong
    slope: 607 µs MAE, against 206 µs for no correction at all. The outlier test now takes
    a short window's scale as at least the longest window's."""
    import dataclasses

    model = dataclasses.replace(SCENARIOS["disciplined"][1], disc_sigma_s=300e-6,
                                disc_limit_s=1e-3, queue_fwd_s=2e-3, queue_back_s=1.5e-3,
                                hours=6.0)
    s = simulate(model, 302)
    trace = Trace("disc-internet#302", s.t, s.offset, s.delay, s.truth, "true_offset", s.delta)
    res = replay(trace, 100.0, ["none", "engine"])
    engine, none = res.runs["engine"].metrics, res.runs["none"].metrics
    assert engine["mae_s"] < none["mae_s"], (engine["mae_s"], none["mae_s"])
    assert engine["coverage"] >= 0.999


@pytest.mark.parametrize("disciplined", [False, True])
def test_a_long_outage_is_held_over_where_nobody_else_keeps_the_clock(disciplined: bool) -> None:
    """Two hours without replies at 16 s polls (the held-out ``outage-long`` clock: 10 ppm,
    0.5 ppm of wander). Past the void the answer is unsynchronized with the kernel's 16 s
    bound; its midpoint used to be the system clock, 72 ms off by the end: 15 ms MAE against
    0.46 ms for a plain line. Held over, the last line stays within a millisecond. On a host
    another daemon keeps on time the system clock stays the midpoint: it is the better guess
    there (that daemon still has its sources), and the stale line would drift from it."""
    import dataclasses

    if disciplined:
        model = dataclasses.replace(SCENARIOS["disciplined"][1], outages=((1.0, 2.0),),
                                    hours=6.0)
    else:
        model = ClockModel(freq_ppm=-10.0, wander_ppm=0.5, wander_period_s=14400.0,
                           outages=((1.0, 2.0),), hours=6.0)
    s = simulate(model, 301)
    trace = Trace("outage-long#301", s.t, s.offset, s.delay, s.truth, "true_offset", s.delta)
    res = replay(trace, 16.0, ["none", "linear", "engine"])
    engine = res.runs["engine"].metrics
    best = min(res.runs["none"].metrics["mae_s"], res.runs["linear"].metrics["mae_s"])
    assert engine["mae_s"] < 1.2 * best, (engine["mae_s"], best)
    assert engine["coverage"] >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_engine_goals_on_scenario(scenario: str) -> None:
    res = replay(load_sim(scenario), 64.0, ["hold", "median", "linear", "engine"])
    ok, detail = goal_check(res, recorded=False)
    assert ok, detail


def test_the_engine_sees_what_others_do_to_the_system_clock() -> None:
    """On the time base the runner feeds the engine ``measured + δ`` and asks with each
    row's δ: a step of the system clock by another process costs no coverage even at
    1024 s polls, while a step of the reference (invisible in δ) is unknowable until the
    next poll. The baselines see only the system clock's offsets."""
    import dataclasses

    model = dataclasses.replace(SCENARIOS["step"][1], hours=6.0)
    seen = simulate(model, 1)
    hidden = simulate(dataclasses.replace(model, step_in_reference=True), 1)

    def run(s: SimTrace) -> dict:
        tr = Trace("step", s.t, s.offset, s.delay, s.truth, "true_offset", s.delta)
        return replay(tr, 1024.0, ("engine", "hold")).runs

    a, b = run(seen), run(hidden)
    assert a["engine"].metrics["coverage"] == 1.0
    assert b["engine"].metrics["coverage"] < 0.99  # the rows before the next poll
    assert a["hold"].metrics == b["hold"].metrics  # same offsets for a naive client


def test_a_delay_burst_is_not_taken_for_a_step() -> None:
    """Agreeing outliers whose extra delay explains their offset (one leg queued) are
    congestion, not a step; the same offsets at the usual delay are a step."""
    def feed(extra_delay: float) -> list[str]:
        eng = Engine()
        rng = np.random.default_rng(2)
        for i in range(40):
            eng.add(Measurement(i * 64.0, rng.normal(0, 10e-6), 1e-3, 5e-4))
        verdicts = []
        for i in range(40, 46):
            d = 1e-3 + extra_delay
            verdicts.append(eng.add(Measurement(i * 64.0, 600e-6, d, d / 2)))
        return verdicts

    assert "step" not in feed(1.3e-3)  # 1.3 ms more queueing: up to 650 µs of bias
    assert "step" in feed(0.0)
