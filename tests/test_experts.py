"""Expert aggregation (core/experts.py): weights follow the realized prediction errors,
recover after a regime change, and the served bound never narrows below the robust fit's."""

from __future__ import annotations

import random

import numpy as np
import pytest

from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.estimator import LineFit
from chronotickd.core.experts import (
    Aggregator,
    ExpertConfig,
    at,
    shrink_to_system_clock,
    widen,
)
from chronotickd.core.measurement import Measurement


def _run(agg: Aggregator, truth, n: int, start: int = 0, gap: float = 64.0,
         noise: float = 20e-6, seed: int = 1) -> None:
    rng = random.Random(seed)
    ts: list[float] = []
    ys: list[float] = []
    for i in range(start, start + n):
        t = i * gap
        y = truth(t) + rng.gauss(0.0, noise)
        agg.score(t, y, noise)
        ts.append(t)
        ys.append(y)
        agg.propose([], np.array(ts[-64:]), np.array(ys[-64:]), 0.0)


def _weight(agg: Aggregator, name: str) -> float:
    return float(agg.weights[agg.names.index(name)])


def test_levels_win_on_a_noisy_level_and_lose_weight_on_a_drift() -> None:
    cfg = ExpertConfig(experts=(("median", 16), ("hold", 1), ("theil-sen", 32)))
    agg = Aggregator(cfg, ())
    _run(agg, lambda t: 1e-3, 80, noise=100e-6)
    assert _weight(agg, "median-16") > 0.5, agg.top()
    # a 20 ppm frequency appears: at 64 s polls a level is 1.3 ms behind each poll; the
    # line takes over within a few dozen polls (fixed share keeps it learnable)
    _run(agg, lambda t: 1e-3 + 20e-6 * (t - 80 * 64.0), 40, start=80, noise=100e-6)
    assert _weight(agg, "theil-sen-32") > 0.5, agg.top()


def test_a_parabola_wins_where_the_frequency_itself_moves() -> None:
    """Thermal wander: the frequency ramps (here 0.8 ppb/s, the bench's wander at its
    steepest). A line through 16 polls lags it by half its span; the parabola's tangent
    does not, earns the weight, and the combined level follows the clock."""
    cfg = ExpertConfig(experts=(("linear", 16), ("quadratic", 16)))
    agg = Aggregator(cfg, ())
    c = 0.8e-9  # frequency change, 1/s

    def truth(t: float) -> float:
        return 5e-6 * t + 0.5 * c * t * t

    _run(agg, truth, 120, noise=10e-6)
    assert _weight(agg, "quadratic-16") > 0.9, agg.top()
    assert agg.combined is not None
    t_next = 120 * 64.0
    assert abs(at(agg.combined, t_next) - truth(t_next)) < 20e-6
    # the line alone is behind by about c·W²/12 + c·W·gap/2 (W = 15 gaps): ~85 µs here
    lin = Aggregator(ExpertConfig(experts=(("linear", 16),)), ())
    _run(lin, truth, 120, noise=10e-6)
    assert lin.combined is not None
    assert abs(at(lin.combined, t_next) - truth(t_next)) > 60e-6


def test_the_combined_frequency_is_the_fitting_experts_weighted_frequency() -> None:
    """The combined line's slope is the weighted mean of the slopes the experts *fit* (not
    the selected robust line's alone): where a plain least-squares line predicts better, it
    also steers the slope answers between polls ride on. The parabola's tangent and the
    levels do not vote on it (their slopes are a tangent at the window's edge and the system
    clock's rate by definition). 1 ms of symmetric queueing each way: the held-out
    ``noisy-path`` at 64 s went from 1.12 to 1.04 x Theil-Sen."""
    cfg = ExpertConfig(experts=(("linear", 16), ("hold", 1), ("quadratic", 16)))
    agg = Aggregator(cfg, ("selected",))
    t = np.arange(16) * 64.0
    y = 3e-6 * t + 1e-12 * t * t
    fit = LineFit(t_ref=480.0, offset_ref=3e-6 * 480.0, freq=9e-6, var_offset=1e-12,
                  var_freq=1e-16, sigma=1e-5, systematic=1e-4, n=16, t_first=0.0,
                  t_last=960.0)
    agg.scored = cfg.warmup + 1  # past the warm-up: the weights decide
    agg.weights = np.array([0.2, 0.4, 0.2, 0.2])  # selected, linear-16, hold, quadratic-16
    line = agg.propose([fit], t, y, 9e-6)
    assert line is not None
    linear = float(np.polyfit(t, y, 1)[0])
    assert line[2] == pytest.approx((0.2 * 9e-6 + 0.4 * linear) / 0.6, rel=1e-9)


def test_a_short_line_wins_where_the_frequency_walks() -> None:
    """A random walk of the frequency (0.5 ppm per 1024 s poll): a line through 16 polls
    (4.5 h) extrapolates a slope hours old, while one through the newest 4 follows the walk.
    The short line earns the weight and the combined prediction one poll ahead is far
    better than the long line's alone (held-out ``rw-strong`` at 1024 s: 1748 -> 1349 us,
    1.22 -> 0.94 x holding the last sample; the matrix's ``wander`` at 256 s: 0.35 x)."""
    gap = 1024.0

    def run(experts: tuple[tuple[str, int], ...]) -> float:
        agg = Aggregator(ExpertConfig(experts=experts), ())
        r = random.Random(3)
        ts: list[float] = []
        ys: list[float] = []
        theta, freq, errors = 0.0, 2e-6, []
        for i in range(160):
            t = i * gap
            y = theta + r.gauss(0.0, 20e-6)
            if agg.combined is not None and i > 40:
                errors.append(abs(at(agg.combined, t) - theta))
            agg.score(t, y, 20e-6)
            ts.append(t)
            ys.append(y)
            agg.propose([], np.array(ts[-64:]), np.array(ys[-64:]), 0.0)
            freq += r.gauss(0.0, 0.5e-6)
            theta += freq * gap
        return float(np.mean(errors))

    long_only = run((("linear", 16),))
    both = run((("linear", 4), ("linear", 16)))
    assert both < 0.6 * long_only, (both, long_only)


def test_fixed_share_keeps_every_expert_recoverable() -> None:
    cfg = ExpertConfig(experts=(("median", 16), ("hold", 1)))
    agg = Aggregator(cfg, ())
    _run(agg, lambda t: 0.0, 300, noise=50e-6)
    # the shipped share (1 %) spread evenly: no expert is ever written off
    assert min(agg.weights) >= 0.01 / len(agg.weights) * 0.999


def test_widen_holds_the_base_interval_everywhere() -> None:
    base = LineFit(t_ref=100.0, offset_ref=1e-3, freq=2e-6, var_offset=1e-10, var_freq=1e-14,
                   sigma=1e-5, systematic=2e-4, n=32, t_first=0.0, t_last=200.0)
    line = (200.0, 1.3e-3, -1e-6)
    k = 3.0
    w = widen(base, line, k)
    for t in np.linspace(0.0, 5000.0, 101):
        b_base = base.systematic + k * base.bound_stddev(t)
        b_w = w.systematic + k * w.bound_stddev(t)
        assert abs(w.predict(t) - (line[1] + line[2] * (t - line[0]))) < 1e-12
        lo, hi = w.predict(t) - b_w, w.predict(t) + b_w
        assert lo <= base.predict(t) - b_base + 1e-15
        assert hi >= base.predict(t) + b_base - 1e-15


def test_engine_serves_a_level_on_a_disciplined_host_and_a_line_on_a_drifting_one() -> None:
    """On noise around a fixed offset the engine's served estimate beats the robust line
    alone (the old engine); on a drifting clock it stays with the lines."""
    rng = np.random.default_rng(3)
    eng = Engine()
    old = Engine(EngineConfig.v1())
    errs, errs_old = [], []
    for i in range(400):
        t = i * 64.0
        d = 1e-3 + rng.exponential(200e-6)
        m = Measurement(t, 50e-6 + rng.normal(0, 150e-6), d, d / 2)
        for e in (eng, old):
            e.add(m)
        if i > 50:
            q = t + 32.0
            errs.append(abs(eng.snapshot(t).query(q).offset - 50e-6))
            errs_old.append(abs(old.snapshot(t).query(q).offset - 50e-6))
    assert np.mean(errs) < 0.9 * np.mean(errs_old)
    track = eng.tracks["ntp"]
    assert track.agg is not None
    assert not track.agg.top(1)[0][0].startswith("line"), track.agg.top()

    eng = Engine()
    for i in range(200):
        t = i * 64.0
        eng.add(Measurement(t, 20e-6 * t + rng.normal(0, 10e-6), 1e-3, 5e-4))
    assert eng.tracks["ntp"].agg.top(1)[0][0] in (  # type: ignore[union-attr]
        "line-8", "line-16", "line-32", "line-64", "theil-sen-16", "theil-sen-32",
        "median-slope-8", "median-slope-16", "linear-16")
    assert abs(eng.snapshot(t).query(t + 64).offset - 20e-6 * (t + 64)) < 50e-6


def test_a_far_off_expert_kept_alive_by_the_share_does_not_bias_the_estimate() -> None:
    """Fixed share leaves every expert some mass; one 0.4 s away (zero on a drifting clock)
    must not pull the combination by its share of it."""
    cfg = ExpertConfig(experts=(("zero", 0), ("theil-sen", 16)))
    agg = Aggregator(cfg, ())
    _run(agg, lambda t: 0.4 + 20e-6 * t, 100, noise=10e-6)
    assert _weight(agg, "zero") > 0  # still learnable
    t = 100 * 64.0
    line = agg.combined
    assert line is not None
    assert abs(line[1] + line[2] * (t - line[0]) - (0.4 + 20e-6 * t)) < 20e-6


def test_collecting_track_serves_its_fit_unsynchronized() -> None:
    """Before min_samples the first measurements are still the best estimate there is: served
    with their own (wide) bound, status unsynchronized; the old engine served nothing."""
    from chronotickd.core.measurement import Status

    for cfg, served in ((EngineConfig(), True), (EngineConfig.v1(), False)):
        eng = Engine(cfg)
        eng.add(Measurement(0.0, 5e-3, 1e-3, 5e-4))
        eng.add(Measurement(256.0, 5e-3 + 20e-6 * 256, 1e-3, 5e-4))
        ans = eng.snapshot(256.0).query(300.0)
        assert ans.status is Status.UNSYNCHRONIZED
        if served:
            truth = 5e-3 + 20e-6 * 300
            assert abs(ans.offset - truth) < 1e-6  # two samples: their own line
            assert abs(ans.offset - truth) <= ans.bound < 1.0
        else:
            assert ans.offset == 0.0


def test_two_agreeing_outliers_confirm_a_step_at_long_polls() -> None:
    def run(cfg: EngineConfig) -> list[str]:
        eng = Engine(cfg)
        out = []
        for i in range(20):
            t = i * 1024.0
            y = 1e-3 + (5e-3 if i >= 12 else 0.0)
            out.append(eng.add(Measurement(t, y + (1e-5 if i % 2 else -1e-5), 1e-3, 5e-4)))
        return out

    assert run(EngineConfig())[12:14] == ["outlier", "step"]
    assert run(EngineConfig.v1())[12:15] == ["outlier", "outlier", "step"]


def test_estimate_is_void_after_six_poll_gaps_not_one_hour_at_long_polls() -> None:
    for cfg, void in ((EngineConfig(), 6 * 1024.0), (EngineConfig.v1(), 3600.0)):
        eng = Engine(cfg)
        for i in range(10):
            eng.add(Measurement(i * 1024.0, 1e-3, 1e-3, 5e-4))
        state = eng.snapshot(9 * 1024.0)
        assert state.void_after_s == void


def test_a_young_fit_claims_no_tighter_frequency_than_the_prior() -> None:
    """Five points on a curving offset fit a line well and extrapolate it badly: below
    ``young_fit_samples`` a fitted slope claims at least ``prior_freq_sigma``."""
    from chronotickd.core.estimator import FitConfig, fit_line

    ms = [Measurement(i * 1024.0, 1e-3 + 5e-6 * i * 1024.0 + 1e-6 * (-1) ** i, 1e-3, 5e-4)
          for i in range(5)]
    for cfg, floor in ((FitConfig(), True), (FitConfig(young_fit_samples=0), False)):
        fit = fit_line(ms, cfg)
        assert fit is not None
        served = fit.serve_var_freq if fit.serve_var_freq is not None else fit.var_freq
        assert (served >= cfg.prior_freq_sigma**2) is floor


def test_a_collecting_fit_is_served_but_not_saved() -> None:
    eng = Engine()
    eng.add(Measurement(0.0, 5e-3, 1e-3, 5e-4))
    assert eng.snapshot(10.0).collecting
    assert eng.export_state(10.0) is None  # one sample's "frequency" must not outlive a restart


def test_the_daemon_runs_the_new_estimator_only_when_configured() -> None:
    """``clock.experts`` (default on, so the daemon runs the engine the replay and the
    accuracy matrix score) can switch back to the engine as it was before issue 13; the
    other clock keys apply to both."""
    from chronotickd.config import Config
    from chronotickd.daemon import engine_config

    assert engine_config(Config({})) == EngineConfig()
    old = engine_config(Config({}).override(clock__experts=False))
    assert old.experts is None and old == EngineConfig.v1()
    new = engine_config(Config({}).override(clock__experts=True, clock__max_drift_ppm=2.0))
    assert new.experts is not None and new.serve_collecting and new.max_drift_ppm == 2.0


def test_level_experts_are_levels_of_the_system_clock() -> None:
    """Under a system clock that another daemon moves (δ, its rate), zero/hold/median mean
    "the system clock keeps its offset": θ levels carried at δ's rate, not flat θ levels."""
    cfg = ExpertConfig(experts=(("zero", 0), ("hold", 1), ("median", 4)))
    agg = Aggregator(cfg, ())
    t = np.array([0.0, 64.0, 128.0, 192.0])
    dl = -6e-6 * t + 0.002  # REALTIME slewed at −6 ppm against the oscillator
    y = dl + 30e-6  # θ samples: the system clock 30 µs behind all along
    agg.propose([], t, y, 0.0, None, dl, -6e-6)
    zero, hold, med = agg.lines
    assert zero == (192.0, dl[-1], -6e-6)
    assert hold == (192.0, y[-1], -6e-6)
    assert med is not None and abs(med[1] - y[-1]) < 1e-12 and med[2] == -6e-6
    # without δ they are flat levels of θ, as before
    agg.propose([], t, y, 0.0)
    assert agg.lines[0] == (192.0, 0.0, 0.0) and agg.lines[1][2] == 0.0  # type: ignore[index]


def test_until_the_samples_tell_the_frequency_the_system_clock_rate_is_the_guess() -> None:
    """One measurement on a host whose REALTIME another daemon keeps on time (δ moving at
    −6 ppm): 1000 s later the engine is not 6 ms off, and its bound is not narrower than
    with no guess (the unknown-frequency uncertainty stays)."""
    from chronotickd.core.timebase import ClockReading

    def run(rate: float) -> tuple[float, float]:
        eng = Engine()
        for k in range(0, 121, 2):  # 2 min of clock readings before the first reply
            eng.observe_clock(ClockReading(float(k), k + rate * k, 0.0))
        t = 120.0
        theta = -6e-6 * t  # the oscillator runs 6 ppm slow; REALTIME is on time
        eng.add(Measurement(t, theta, 1e-3, 5e-4))
        q = t + 1000.0
        for k in range(122, int(q) + 1, 2):
            eng.observe_clock(ClockReading(float(k), k + rate * k, 0.0))
        ans = eng.snapshot(q).answer_delta(q, rate * q)
        truth = (-6e-6 * q) - rate * q  # θ − δ
        return abs(ans[0] - truth), ans[1]

    err_guess, bound_guess = run(-6e-6)
    assert err_guess < 50e-6
    eng = Engine()  # nobody moves REALTIME: no guess, the 6 ppm shows in full
    eng.add(Measurement(120.0, -6e-6 * 120.0, 1e-3, 5e-4))
    plain = eng.snapshot(1120.0).query(1120.0)
    assert abs(plain.offset - (-6e-6 * 1120.0)) > 5e-3
    assert bound_guess >= 0.99 * plain.bound


def test_a_fast_slew_is_not_taken_for_the_oscillator_rate() -> None:
    """REALTIME slewed at 500 ppm (an offset being removed): no guess from it."""
    from chronotickd.core.timebase import ClockReading

    eng = Engine()
    for k in range(0, 121, 2):
        eng.observe_clock(ClockReading(float(k), k + 500e-6 * k, 0.0))
    assert eng._system_rate() == 0.0


def test_the_bound_holds_the_newest_accepted_samples_interval() -> None:
    """After an outage over which the frequency wandered, the robust fit can down-weight the
    first replies it accepts; the served bound still holds their intervals."""
    eng = Engine()
    rng = np.random.default_rng(5)
    t = 0.0
    for _ in range(40):  # steady 10 ppm at 64 s polls
        eng.add(Measurement(t, 10e-6 * t + rng.normal(0, 20e-6), 1e-3, 5e-4))
        t += 64.0
    t += 1800.0  # 30 min outage; the frequency moved by 0.8 ppm meanwhile (within the
    truth = 10e-6 * t + 0.8e-6 * 1800.0  # drift allowance: accepted, yet 1.4 ms off the line)
    assert eng.add(Measurement(t, truth, 1e-3, 5e-4)) == "accepted"
    a = eng.snapshot(t).query(t + 1.0)
    assert abs(a.offset - truth) > 1e-3  # the robust line set the new sample aside ...
    assert abs(a.offset - truth) <= a.bound  # ... but the bound holds its interval


def test_where_a_daemon_disciplines_the_system_clock_its_clock_is_the_prior() -> None:
    """δ moving: the zero expert starts level with the robust lines and holds half the
    weight during the warm-up; nobody moving δ: the lines alone serve the warm-up."""
    cfg = ExpertConfig(experts=(("zero", 0), ("hold", 1)))
    agg = Aggregator(cfg, ("selected",))
    t = np.array([0.0, 1024.0])
    dl = -6e-6 * t
    y = dl + np.array([90e-6, -60e-6])  # θ: the system clock's noisy offsets + δ
    fit = LineFit(t_ref=512.0, offset_ref=float(y.mean()), freq=-6e-6, var_offset=1e-9,
                  var_freq=1e-14, sigma=1e-4, systematic=5e-4, n=2, t_first=0.0,
                  t_last=1024.0)
    plain = agg.propose([fit], t, y, -6e-6, None, dl, -6e-6)
    assert plain is not None
    line_level = at((fit.t_ref, fit.offset_ref, fit.freq), 1024.0)
    assert abs(plain[1] - line_level) < 1e-12  # warm-up: the robust line alone
    agg.note_disciplined()
    assert agg.loss[agg.names.index("zero")] == agg.loss.min()
    mixed = agg.propose([fit], t, y, -6e-6, None, dl, -6e-6)
    assert mixed is not None
    assert abs(mixed[1] - (line_level + dl[-1]) / 2) < 1e-12  # half the weight on "zero"


def test_the_disciplined_prior_holds_as_much_weight_as_all_the_robust_lines_together() -> None:
    """After the warm-up too: the robust lines (one per window) are one hypothesis, so "the
    system clock is right" starts level with all of them, not with each. Level with each, it
    fell to a sixth of the mass once the warm-up ended, and at 1024 s polls (22 noisy samples
    in 6 h) the engine served lines it could not yet pin down: 1.095 × the uncorrected
    clock's error (bench_accuracy, disciplined)."""
    lines = ("selected", "line-8", "line-16", "line-32", "line-64")
    agg = Aggregator(ExpertConfig(), lines)
    agg.note_disciplined()
    w = agg.weights
    zero = w[agg.names.index("zero")]
    assert zero == pytest.approx(float(w[: len(lines)].sum()), rel=0.02)
    assert zero > 0.45


def test_a_disciplined_clock_is_the_prior_only_where_it_agrees_with_the_measurements() -> None:
    """δ moving (a daemon at work) is not enough: its clock must agree with the newest
    measurements. 50 ms off, it gets no head start (rig scenario a)."""
    from chronotickd.core.timebase import ClockReading

    def favoured(system_offset: float) -> bool:
        eng = Engine()
        rate = -6e-6  # the other daemon's frequency correction
        for k in range(0, 601, 2):
            eng.observe_clock(ClockReading(float(k), k + rate * k, 0.0))
        rng = np.random.default_rng(4)
        for i in range(10):
            t = 600.0 + i * 64.0
            eng.observe_clock(ClockReading(t, t + rate * t, 0.0))
            theta = rate * t + system_offset  # the system clock `system_offset` behind
            eng.add(Measurement(t, theta + rng.normal(0, 50e-6), 1e-3, 5e-4))
        agg = eng.tracks["ntp"].agg
        assert agg is not None
        return agg.disciplined

    assert favoured(30e-6)
    assert not favoured(50e-3)


def test_a_step_of_the_system_clock_is_not_mixed_into_its_levels() -> None:
    """Another process stepped REALTIME by −2 s two samples ago: a median of the system
    clock's offsets takes only the samples after the step. Mixed with the 14 before it, the
    median said the system clock still had its old offset, 2 s from θ. On a fleet host
    stepped −2 s (bench_fleet) that put answers 142 ms off, inside a 142 ms bound, until the
    next poll; with the fix its p99 error was 18 µs."""
    agg = Aggregator(ExpertConfig(experts=(("median", 16),)), ())
    t = np.arange(16) * 2.0
    theta = 1e-3 + 2e-6 * t
    dl = np.where(t >= 28.0, -2.0, 0.0)  # δ = REALTIME − RAW: −2 s for the last two samples
    agg.propose([], t, theta, 2e-6, None, dl, 0.0, since=2)
    _t0, level, _rate = agg.lines[0]
    assert abs(level - theta[-1]) < 1e-5  # θ at the newest sample, not 2 s off
    agg.propose([], t, theta, 2e-6, None, dl, 0.0, since=None)  # without knowing the step
    assert abs(agg.lines[0][1] - theta[-1]) > 1.0


def test_a_disciplined_clock_keeps_what_the_measurements_cannot_tell_apart_from_it() -> None:
    """Empirical Bayes on a disciplined host (``shrink_to_system_clock``): a line
    whose claimed offset of the system clock lies inside its own standard error is moved
    most of the way back to that clock; a line sure of a 1 ms offset keeps it."""
    fit = LineFit(t_ref=0.0, offset_ref=0.0, freq=0.0, var_offset=(60e-6) ** 2, var_freq=0.0,
                  sigma=1e-4, systematic=0.0, n=4, t_first=-3072.0, t_last=0.0)
    unsure = shrink_to_system_clock((0.0, 5e-3 + 40e-6, 1e-6), fit, 5e-3, 1024.0)
    assert abs(unsure[1] - 5e-3) < 0.35 * 40e-6  # 40 µs claimed, σ 60 µs: ≤ 14 µs kept
    assert unsure[2] == 1e-6  # the frequency is the line's
    sure = shrink_to_system_clock((0.0, 5e-3 + 1e-3, 0.0), fit, 5e-3, 1024.0)
    assert abs(sure[1] - 6e-3) < 0.01 * 1e-3


def test_a_disciplined_clock_keeps_the_rate_the_measurements_cannot_tell_apart() -> None:
    """The frequency is shrunk like the level: a line whose slope differs from the rate the
    other daemon steers REALTIME at by less than its own standard error goes most of the way
    to that rate (between polls the answer is the line less REALTIME's course, so a slope
    left 0.2 ppm off walks 200 µs over a 1024 s poll); a slope sure of 2 ppm keeps it."""
    fit = LineFit(t_ref=0.0, offset_ref=0.0, freq=0.0, var_offset=(60e-6) ** 2,
                  var_freq=(0.3e-6) ** 2, sigma=1e-4, systematic=0.0, n=4, t_first=-3072.0,
                  t_last=0.0)
    rate = -6e-6
    unsure = shrink_to_system_clock((0.0, 5e-3 + 40e-6, rate + 0.2e-6), fit, 5e-3, 1024.0,
                                    rate)
    assert abs(unsure[2] - rate) < 0.35 * 0.2e-6
    sure = shrink_to_system_clock((0.0, 5e-3 + 40e-6, rate + 2e-6), fit, 5e-3, 1024.0, rate)
    assert abs(sure[2] - (rate + 2e-6)) < 0.03 * 2e-6


def test_a_young_fit_is_not_surer_of_the_clock_than_its_samples_intervals() -> None:
    """One sample with ±500 µs of interval, whose fit's scale claims 5 µs: a 60 µs claimed
    offset of the system clock is inside what that sample can tell, so it is mostly shrunk
    away; the same claim from a mature fit with that scale is kept."""
    def fit_of(n: int) -> LineFit:
        return LineFit(t_ref=0.0, offset_ref=0.0, freq=0.0, var_offset=(5e-6) ** 2,
                       var_freq=0.0, sigma=5e-6, systematic=500e-6, n=n, t_first=-1.0 * n,
                       t_last=0.0)

    line = (0.0, 5e-3 + 60e-6, 0.0)
    young = shrink_to_system_clock(line, fit_of(1), 5e-3, 1024.0, None, 8)
    assert abs(young[1] - 5e-3) < 0.1 * 60e-6
    mature = shrink_to_system_clock(line, fit_of(40), 5e-3, 1024.0, None, 8)
    assert abs(mature[1] - (5e-3 + 60e-6)) < 0.02 * 60e-6


def test_a_disciplined_host_is_believed_from_its_first_agreeing_sample() -> None:
    """δ shows another daemon steering REALTIME and the first sample's interval holds the
    system clock: the experts' prior is that clock from then on (at 1024 s polls, waiting for
    three samples left 2048 s to a line through one or two). A first sample 50 ms off is not
    agreement."""
    from chronotickd.core.timebase import ClockReading

    def disciplined_after_one(system_offset: float) -> bool:
        eng = Engine()
        rate = -6e-6
        for k in range(0, 601, 2):
            eng.observe_clock(ClockReading(float(k), k + rate * k, 0.0))
        eng.add(Measurement(600.0, rate * 600.0 + system_offset, 1e-3, 5e-4))
        track = eng.tracks["ntp"]
        assert track.agg is not None
        return track.agg.disciplined

    assert disciplined_after_one(-90e-6)
    assert not disciplined_after_one(50e-3)


def test_the_engine_shrinks_only_on_a_disciplined_host() -> None:
    """12 polls 1024 s apart with 141 µs of path noise on a host another daemon keeps
    30 µs behind the reference: the level served sits nearer that daemon's clock than the
    experts' combination does (the engine applies the shrink), and the bound served still
    holds the true offset; the same samples without a steered REALTIME are served as
    combined."""
    from chronotickd.core.timebase import ClockReading

    true_offset = 30e-6  # the system clock's, against the reference

    def served_and_combined(rate: float) -> tuple[float, float, float]:
        eng = Engine()
        rng = np.random.default_rng(7)
        for k in range(0, 601, 2):
            eng.observe_clock(ClockReading(float(k), k + rate * k, 0.0))
        last = 600.0
        for i in range(12):
            t = 1624.0 + i * 1024.0
            for raw in np.arange(last + 64.0, t, 64.0):  # the loop reads both clocks meanwhile
                eng.observe_clock(ClockReading(float(raw), float(raw) + rate * raw, 0.0))
            eng.observe_clock(ClockReading(t, t + rate * t, 0.0))
            eng.add(Measurement(t, rate * t + true_offset + rng.normal(0, 141e-6), 1e-3,
                                5e-4))
            last = t
        track = eng.tracks["ntp"]
        assert track.agg is not None and track.agg.combined is not None and track.fit
        t_last = track.agg.combined[0]
        answer = eng.snapshot(t_last).query(t_last)
        truth = rate * t_last + true_offset
        assert abs(answer.offset - truth) <= answer.bound, (answer, truth)
        return (track.fit.predict(t_last), at(track.agg.combined, t_last), rate * t_last)

    served, combined, system = served_and_combined(-6e-6)
    assert abs(served - system) < 0.9 * abs(combined - system)
    served0, combined0, _ = served_and_combined(0.0)
    assert served0 == pytest.approx(combined0, abs=1e-12)
