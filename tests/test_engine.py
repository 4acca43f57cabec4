"""The pure engine on synthetic measurements, time passed in: tracking, robustness, status,
persistence, retrospective answers and source selection."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

import pytest

from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.measurement import Measurement, Status
from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S

T0 = 1_700_000_000.0
GAP = 2.0


def linear(offset0: float, freq: float) -> Callable[[float], float]:
    return lambda t: offset0 + freq * (t - T0)


def samples(truth: Callable[[float], float], n: int, *, noise: float = 0.0, seed: int = 1,
            start: int = 0, delay: float = 0.0004, source: str = "ntp:a", kind: str = "ntp",
            gap: float = GAP) -> Iterator[Measurement]:
    """NTP-like measurements: Gaussian offset noise, delay with a small queueing tail."""
    rng = random.Random(seed)
    for i in range(start, start + n):
        t = T0 + i * gap
        d = delay + abs(rng.gauss(0.0, delay / 8))
        yield Measurement(t, truth(t) + rng.gauss(0.0, noise), d, d / 2, source, kind)


def feed(engine: Engine, ms: Iterator[Measurement]) -> list[str]:
    return [engine.add(m) for m in ms]


# -- tracking ---------------------------------------------------------------------------------
def test_pure_linear_drift_is_tracked() -> None:
    truth = linear(0.0035, 12e-6)
    e = Engine()
    feed(e, samples(truth, 40))
    t = T0 + 40 * GAP
    ans = e.snapshot(t).query(t)
    assert ans.status is Status.SYNCHRONIZED
    assert abs(ans.offset - truth(t)) < 1e-6
    assert e.tracks["ntp:a"].fit.freq == pytest.approx(12e-6, abs=1e-8)
    # the bound is honest but not absurd: about half the round trip
    assert abs(ans.offset - truth(t)) <= ans.bound < 1e-3


def test_noise_is_averaged_and_spikes_rejected() -> None:
    truth = linear(-0.001, -8e-6)
    e = Engine()
    verdicts = []
    spikes = 0
    for i, m in enumerate(samples(truth, 200, noise=50e-6, seed=3)):
        if i % 23 == 11:  # an isolated 20 ms spike (one queued reply)
            m = Measurement(m.t, m.offset + 0.020, m.delay, m.bound, m.source, m.kind)
            spikes += 1
        verdicts.append(e.add(m))
    assert verdicts.count("outlier") == spikes
    assert "step" not in verdicts
    t = T0 + 200 * GAP
    ans = e.snapshot(t).query(t)
    assert abs(ans.offset - truth(t)) < 30e-6  # better than one sample's noise
    assert abs(ans.offset - truth(t)) <= ans.bound


def test_clock_step_is_detected_and_reconverges() -> None:
    before = linear(0.001, 5e-6)

    def after(t: float) -> float:
        return before(t) - 0.050  # someone stepped the clock by 50 ms

    e = Engine()
    feed(e, samples(before, 60, noise=20e-6))
    verdicts = feed(e, samples(after, 20, noise=20e-6, start=60, seed=9))
    assert "step" in verdicts
    assert verdicts.index("step") < e.cfg.step_confirm  # confirmed by the first few
    assert e.tracks["ntp:a"].steps == 1
    t = T0 + 80 * GAP
    ans = e.snapshot(t).query(t)
    assert ans.status is Status.SYNCHRONIZED
    assert abs(ans.offset - after(t)) <= ans.bound
    assert abs(ans.offset - after(t)) < 100e-6


def test_bound_covers_truth_over_a_noisy_run() -> None:
    """Coverage: at query times between measurements the bound contains the true offset."""
    truth = linear(0.002, 20e-6)
    e = Engine()
    queries = misses = 0
    for i, m in enumerate(samples(truth, 400, noise=60e-6, seed=11, delay=0.0008)):
        e.add(m)
        if i < e.cfg.min_samples:
            continue
        state = e.snapshot(m.t + 0.1)
        for dt in (0.3, 1.0, 1.9):
            ans = state.query(m.t + dt)
            queries += 1
            misses += abs(ans.offset - truth(m.t + dt)) > ans.bound
    assert queries > 1000
    assert misses / queries <= 0.01


# -- status over time --------------------------------------------------------------------------
def test_status_unsynchronized_until_min_samples() -> None:
    truth = linear(0.001, 0.0)
    e = Engine()
    t = T0
    state = e.snapshot(t)
    ans = state.query(t)
    assert ans.status is Status.UNSYNCHRONIZED and ans.source == "system"
    assert ans.bound == KERNEL_UNSYNC_MAXERROR_S and ans.offset == 0.0
    ms = list(samples(truth, e.cfg.min_samples))
    for m in ms[:-1]:
        e.add(m)
        assert e.snapshot(m.t).query(m.t).status is Status.UNSYNCHRONIZED
    e.add(ms[-1])
    ans = e.snapshot(ms[-1].t).query(ms[-1].t)
    assert ans.status is Status.SYNCHRONIZED and ans.source == "ntp"


def test_unsync_bound_comes_from_caller() -> None:
    ans = Engine().snapshot(T0, unsync_bound=0.25).query(T0)
    assert ans.status is Status.UNSYNCHRONIZED and ans.bound == 0.25


def test_freerunning_after_stale_and_unsynchronized_after_void() -> None:
    cfg = EngineConfig(stale_after_s=30.0, void_after_s=600.0)
    e = Engine(cfg)
    feed(e, samples(linear(0.001, 3e-6), 20))
    last = T0 + 19 * GAP
    assert e.snapshot(last + 29).query(last + 29).status is Status.SYNCHRONIZED
    state = e.snapshot(last + 31)
    b1 = state.query(last + 31)
    assert b1.status is Status.FREERUNNING and b1.source == "ntp"
    b2 = state.query(last + 300)
    assert b2.status is Status.FREERUNNING and b2.bound > b1.bound
    # the bound grows at least at max_drift
    assert b2.bound - b1.bound >= cfg.max_drift_ppm * 1e-6 * (300 - 31) * 0.999
    gone = e.snapshot(last + 601).query(last + 601)
    # past the void: unsynchronized, the kernel's bound (the line held over: a free-running
    # host, see test_past_the_void_...; without holdover the system clock itself)
    assert gone.status is Status.UNSYNCHRONIZED and gone.bound >= KERNEL_UNSYNC_MAXERROR_S
    assert gone.source == "ntp"
    e = Engine(EngineConfig(stale_after_s=30.0, void_after_s=600.0, holdover=False))
    feed(e, samples(linear(0.001, 3e-6), 20))
    gone = e.snapshot(last + 601).query(last + 601)
    assert gone.status is Status.UNSYNCHRONIZED and gone.source == "system"
    assert gone.offset == 0.0


def test_stale_after_scales_with_poll_interval() -> None:
    """With 64 s polls a 100 s gap is not staleness (at least 4 poll intervals)."""
    e = Engine(EngineConfig(stale_after_s=64.0))
    feed(e, samples(linear(0.0, 1e-6), 10, gap=64.0))
    last = T0 + 9 * 64.0
    assert e.snapshot(last + 100).query(last + 100).status is Status.SYNCHRONIZED
    assert e.snapshot(last + 300).query(last + 300).status is Status.FREERUNNING


# -- persistence -----------------------------------------------------------------------------
def test_export_restore_serves_freerunning_with_growing_bound() -> None:
    truth = linear(0.004, 15e-6)
    old = Engine()
    feed(old, samples(truth, 60, noise=10e-6))
    saved_at = T0 + 60 * GAP
    saved = old.export_state(saved_at)
    assert saved is not None and saved["freq"] == pytest.approx(15e-6, abs=1e-7)

    new = Engine()
    new.restore_state(saved)
    restart = saved_at + 30
    state = new.snapshot(restart)
    a1 = state.query(restart)
    a2 = state.query(restart + 100)
    assert a1.status is Status.FREERUNNING and a1.source == "restored"
    assert abs(a1.offset - truth(restart)) <= a1.bound
    assert a2.bound > a1.bound
    assert a2.bound - a1.bound == pytest.approx(new.cfg.restore_drift_ppm * 1e-6 * 100, rel=0.05)
    # a restored estimate is never re-exported as if it were measured
    assert new.export_state(restart) is None
    # fresh samples take over: synchronized again, and the prior frequency seeds the new track
    feed(new, samples(truth, new.cfg.min_samples, start=80))
    assert new.tracks["ntp:a"].prior_freq == pytest.approx(saved["freq"])
    t = T0 + 80 * GAP + (new.cfg.min_samples - 1) * GAP
    ans = new.snapshot(t).query(t)
    assert ans.status is Status.SYNCHRONIZED and ans.source == "ntp"
    assert abs(ans.offset - truth(t)) <= ans.bound


def test_restart_never_narrows_the_bound_of_a_stale_estimate() -> None:
    """Saved long after the last sample (NTP lost), restored: the bound must not shrink."""
    truth = linear(0.004, 15e-6)
    old = Engine()
    feed(old, samples(truth, 60, noise=20e-6))
    last = T0 + 59 * GAP
    saved_at = last + 1800  # persisted every minute while no sample came for 30 min
    saved = old.export_state(saved_at)
    assert saved is not None
    new = Engine()
    new.restore_state(saved)
    for t in (saved_at + 1, saved_at + 60, saved_at + 1000):
        before = old.snapshot(t).query(t)
        after = new.snapshot(t).query(t)
        assert after.bound >= before.bound
        assert abs(after.offset - truth(t)) <= after.bound
        assert after.void_after == pytest.approx(before.void_after)


def test_export_without_estimate_is_none() -> None:
    assert Engine().export_state(T0) is None


# -- retrospective ----------------------------------------------------------------------------
def test_at_uses_later_measurements() -> None:
    truth = linear(0.001, 10e-6)
    e = Engine()
    ms = list(samples(truth, 100, noise=40e-6, seed=5))
    feed(e, iter(ms[:50]))
    t_past = ms[49].t + 1.0  # between measurement 49 and 50
    then = e.snapshot(t_past).query(t_past)
    feed(e, iter(ms[50:]))
    late = e.snapshot(ms[-1].t)
    ans = late.at(t_past)
    assert ans.system_time == t_past
    assert ans.status is Status.SYNCHRONIZED
    assert abs(ans.offset - truth(t_past)) <= ans.bound
    assert ans.as_of > t_past  # measurements after the instant were used
    assert ans.bound <= then.bound


def test_at_fits_memoized_per_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of `at` queries near one instant costs one local fit, not one each (issue 14:
    heavy work bounded in cost); the answers are the same, and a new snapshot starts afresh."""
    from chronotickd.core import state as state_mod

    e = Engine()
    ms = list(samples(linear(0.001, 10e-6), 100, noise=40e-6, seed=5))
    feed(e, iter(ms))
    snap = e.snapshot(ms[-1].t)
    fits: list[int] = []
    real = state_mod.fit_line

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        fits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(state_mod, "fit_line", counting)
    t_past = ms[49].t + 1.0
    first = snap.at(t_past)
    n = len(fits)
    assert n >= 1
    again = [snap.at(t_past + i * 1e-3) for i in range(50)]
    assert len(fits) == n
    assert again[0] == first
    e.snapshot(ms[-1].t + 1).at(t_past)
    assert len(fits) == 2 * n


def test_at_cached_only_never_fits() -> None:
    """``cached_only`` (the server's on-loop path) answers from fits the snapshot already has,
    exactly as a full ``at`` does, and raises FitNeeded rather than fit one."""
    from chronotickd.core.state import FitNeeded

    e = Engine()
    ms = list(samples(linear(0.001, 10e-6), 100, noise=40e-6, seed=5))
    feed(e, iter(ms))
    snap = e.snapshot(ms[-1].t)
    t_past = ms[49].t + 1.0
    with pytest.raises(FitNeeded):
        snap.at(t_past, cached_only=True)
    full = snap.at(t_past)
    assert snap.at(t_past, cached_only=True) == full
    with pytest.raises(FitNeeded):  # another window of the history: not fitted yet
        snap.at(ms[5].t, cached_only=True)


def test_at_before_a_step_uses_the_old_offset() -> None:
    before = linear(0.001, 0.0)
    e = Engine()
    feed(e, samples(before, 60, noise=10e-6))
    feed(e, samples(lambda t: before(t) + 0.030, 30, noise=10e-6, start=60))
    t_before = T0 + 55 * GAP + 1.0
    ans = e.snapshot(T0 + 90 * GAP).at(t_before)
    assert abs(ans.offset - before(t_before)) <= ans.bound


def test_at_inside_the_step_gap_covers_both_sides() -> None:
    """Between the last sample before a step and the first after it, either may be true."""
    before = linear(0.001, 0.0)
    e = Engine()
    feed(e, samples(before, 60, noise=10e-6))
    feed(e, samples(lambda t: before(t) + 0.030, 30, noise=10e-6, start=60))
    t_gap = T0 + 59 * GAP + 1.0
    ans = e.snapshot(T0 + 90 * GAP).at(t_gap)
    assert ans.offset - ans.bound <= before(t_gap) <= ans.offset + ans.bound
    assert ans.offset - ans.bound <= before(t_gap) + 0.030 <= ans.offset + ans.bound
    after = e.snapshot(T0 + 90 * GAP).at(T0 + 61 * GAP)
    assert abs(after.offset - (before(0) + 0.030)) <= after.bound < 1e-3


def test_spike_before_a_step_is_not_kept() -> None:
    before = linear(0.0, 0.0)
    e = Engine()
    feed(e, samples(before, 30))
    spike = Measurement(T0 + 30 * GAP, 0.020, 0.0004, 0.0002, "ntp:a")
    assert e.add(spike) == "outlier"
    verdicts = feed(e, samples(lambda t: -0.050, 3, start=31))
    assert verdicts[-1] == "step"
    assert all(m.offset == pytest.approx(-0.050) for m in e.tracks["ntp:a"].samples)


def test_at_without_history_falls_back_to_query() -> None:
    state = Engine().snapshot(T0)
    assert state.at(T0 - 5).status is Status.UNSYNCHRONIZED


def test_future_bound_grows() -> None:
    e = Engine()
    feed(e, samples(linear(0.0, 2e-6), 30, noise=10e-6))
    now = T0 + 30 * GAP
    state = e.snapshot(now)
    a0 = state.query(now)
    a10 = state.future(now, 10.0)
    assert a10.system_time == now + 10.0
    assert a10.bound > a0.bound


# -- selection --------------------------------------------------------------------------------
def test_selection_prefers_tighter_source_with_hysteresis() -> None:
    e = Engine()
    wide = samples(linear(0.001, 0.0), 200, delay=0.002, source="ntp:wide", seed=1)
    similar = samples(linear(0.001, 0.0), 200, delay=0.0016, source="ptp:similar",
                      kind="ptp", seed=2)
    # the wide one alone first: it is selected
    for _ in range(5):
        e.add(next(wide))
    now = T0 + 5 * GAP
    assert e.snapshot(now).source == "ntp" and e.selected == "ntp:wide"
    # a source only ~1.25x tighter does not take over (switch_ratio 1.5)
    for _ in range(40):
        e.add(next(wide))
        e.add(next(similar))
        e.snapshot(T0 + 0.5)
    now = T0 + 60 * GAP
    assert e.selected == "ntp:wide"
    # a much tighter source does
    tight = samples(linear(0.001, 0.0), 10, delay=0.0001, source="ptp:tight", kind="ptp",
                    start=45, seed=3)
    feed(e, tight)
    state = e.snapshot(T0 + 55 * GAP)
    assert e.selected == "ptp:tight" and state.source == "ptp"
    rows = {r.name: r for r in state.tracks}
    assert rows["ptp:tight"].selected and rows["ptp:tight"].reason == "selected"
    # not selected: standby, or already past the selection-silence rule (3 poll gaps)
    assert rows["ntp:wide"].reason in ("standby", "silent (failover)")
    assert not rows["ntp:wide"].selected
    del now


def test_selection_falls_back_when_selected_goes_stale() -> None:
    cfg = EngineConfig(stale_after_s=20.0)
    e = Engine(cfg)
    feed(e, samples(linear(0.0, 0.0), 10, delay=0.0001, source="ptp:tight", kind="ptp"))
    feed(e, samples(linear(0.0, 0.0), 40, delay=0.002, source="ntp:wide"))
    e.snapshot(T0 + 9 * GAP)
    state = e.snapshot(T0 + 39 * GAP)  # ptp stopped at T0+18, ntp is fresh
    assert e.selected == "ntp:wide" and state.source == "ntp"
    assert state.query(T0 + 39 * GAP).status is Status.SYNCHRONIZED
    rows = {r.name: r for r in state.tracks}
    assert rows["ptp:tight"].reason == "stale"


def test_collecting_track_reports_progress() -> None:
    e = Engine()
    e.add(next(samples(linear(0.0, 0.0), 1)))
    (row,) = e.snapshot(T0).tracks
    assert not row.usable and row.reason.startswith("collecting (1/")
    assert row.bound_now is None


def test_first_fits_cover_honest_delayed_samples() -> None:
    """The first fits (3–7 samples, burst-spaced 0.5–1 s) with some replies delayed by CPU
    starvation: each honest (true offset within its delay/2), one of them enough to tilt a
    line through so few points by ms per second. The served bound must still hold; it did not
    when a slope from 3 samples was served with the scatter's or a 100 ppm uncertainty (the
    clock rig, docs/rig.md: a 1800 ppm slope whose bound grew 150 µs/s)."""
    rng = random.Random(7)
    misses = []
    for _trial in range(150):
        freq, theta0 = rng.uniform(-50e-6, 50e-6), rng.uniform(-0.1, 0.1)
        eng = Engine(EngineConfig())
        t = 100.0
        for i in range(7):
            delay = 60e-6 if rng.random() < 0.6 else rng.uniform(0.2e-3, 4e-3)
            err = rng.uniform(-1.0, 1.0) * delay / 2
            eng.add(Measurement.from_ntp(t, theta0 + freq * t + err, delay, source="ntp:a"))
            state = eng.snapshot(t)
            for ahead in (0.05, 0.3, 1.0, 2.0, 4.0):
                a = state.query(t + ahead)
                if a.status == Status.UNSYNCHRONIZED:
                    continue
                truth = theta0 + freq * (t + ahead)
                if abs(a.offset - truth) > a.bound:
                    misses.append((i, ahead, a.offset - truth, a.bound))
            t += rng.choice((0.5, 0.5, 1.0))
    assert not misses, misses[:5]


def test_the_sample_far_from_a_burst_is_not_outvoted_by_it() -> None:
    """A burst of 4 samples 2 s apart, two more, and one 2 minutes out (offsets measured on
    the bench's congestion clock, 5 ppm): the far sample is the only one that can tell the
    slope, and its residual is judged against the young line's own uncertainty there, not
    against the burst's spread. Set aside, the fit served a slope that put the next minute's
    answers 250–350 µs off; kept, 10 µs."""
    from chronotickd.core.estimator import fit_line

    times = [0.0, 2.0, 4.0, 6.0, 22.0, 54.0, 118.0]
    measured = [987.7, 1090.0, 998.2, 1028.7, 1142.1, 1404.6, 1577.1]  # µs
    delays = [854.5, 1065.1, 883.0, 812.8, 875.9, 1198.8, 852.1]
    ms = [Measurement.from_ntp(t, y * 1e-6, d * 1e-6)
          for t, y, d in zip(times, measured, delays, strict=True)]
    fit = fit_line(ms)
    assert fit is not None
    truth_160 = 1800e-6  # 1000 µs + 5 ppm × 160 s
    assert abs(fit.predict(160.0) - truth_160) < 50e-6
    assert fit.freq == pytest.approx(5e-6, abs=1e-6)


def test_a_frequency_turning_after_the_burst_is_followed_not_called_outliers() -> None:
    """A burst of 4 replies 2 s apart, then polls every 64 s, while the oscillator's
    frequency turns by 3 ppm in 5 minutes (10 ppb/s from minute 4 to minute 9, a fast
    thermal cycle). The burst makes the fit's noise scale a few µs, so the first replies
    off the line's course are outliers; once two of them leave it further at each poll, on
    the course the newest accepted samples began, they are the clock and are taken. Called
    outliers until enough agreed for a step (the whole window's line could not hold the
    bend), the answer was 383 µs off at minute 11; now 56."""
    turn_at, turn_end, accel = 240.0, 540.0, 10e-9

    def truth(t: float) -> float:
        tau = t - T0
        a = min(max(0.0, tau - turn_at), turn_end - turn_at)
        b = max(0.0, tau - turn_end)
        return 0.001 + 5e-6 * tau + 0.5 * accel * a * a + accel * (turn_end - turn_at) * b

    times = [0.0, 2.0, 4.0, 6.0, *(64.0 * k for k in range(1, 20))]
    rng = random.Random(1)
    e = Engine()
    verdicts, worst = [], 0.0
    for tau in times:
        t = T0 + tau
        verdicts.append(e.add(Measurement(t, truth(t) + rng.gauss(0.0, 3e-6), 0.0004, 0.0002,
                                          "ntp:a", "ntp")))
        if tau >= 600.0:  # from minute 10 on: the turn is over, the clock steady again
            state = e.snapshot(t)
            for dt in (1.0, 32.0, 63.0):
                ans = state.query(t + dt)
                err = abs(ans.offset - truth(t + dt))
                assert err <= ans.bound
                worst = max(worst, err)
    assert "step" not in verdicts
    assert "outlier" in verdicts  # the situation the test is about did arise
    assert worst < 150e-6, f"{worst * 1e6:.0f} us off a clock that turned"


def test_a_young_slope_resting_on_a_queued_reply_is_shrunk_not_served() -> None:
    """Two replies 256 s apart, the second queued 21 ms (its offset 10 ms off, honest within
    its delay/2): a line through them claims 40 ppm on a 2 ppm clock, and served as is it put
    the next 256 s 10–20 ms off (held-out ``spikes-heavy``, docs/heldout.md). The slope is
    shrunk towards the guess by how much the queueing leaves it unknown; the bound still
    covers the samples' own slope. Clean replies keep theirs, however close in time."""
    from chronotickd.core.estimator import FitConfig, fit_line

    truth = linear(1.5e-3, 2e-6)
    queued = [Measurement.from_ntp(T0, truth(T0), 0.83e-3),
              Measurement.from_ntp(T0 + 256, truth(T0 + 256) + 10e-3, 21.3e-3)]
    fit = fit_line(queued)
    assert fit is not None
    assert abs(fit.freq - 2e-6) < 5e-6
    later = T0 + 512
    assert abs(fit.predict(later) - truth(later)) < 2e-3
    raw = fit_line(queued, FitConfig(young_slope_prior_sigma=0.0))
    assert raw is not None and raw.freq > 35e-6  # what it served before
    assert 3 * fit.bound_stddev(later) > abs(raw.predict(later) - fit.predict(later))

    # clean replies 0.5 s apart (a burst on a LAN): their slope is as noisy as the noise
    # floor says, and that is the young fit's floors' business, not queueing's; shrinking
    # it too cost the clock rig's first seconds 4.6 -> 7.5 µs
    clean = [Measurement.from_ntp(100 + 0.5 * k, 0.05 + 20e-6 * 0.5 * k, 60e-6)  # raw time
             for k in range(4)]
    fit = fit_line(clean)
    assert fit is not None
    assert fit.freq == pytest.approx(20e-6, rel=1e-6)


def test_the_reference_delay_never_sinks_below_the_tracks_typical_delay() -> None:
    """A window half filled by a faster route's replies has its median between the routes;
    judged against it the typical replies look queued by 1 ms and lose their weight to the
    minority (the real trace at 150 s polls followed it for hours). Against the track's
    typical delay they keep it. A window that queued more than typical keeps its own median
    (judged against the quiet path, all of it would look queued alike)."""
    import numpy as np

    from chronotickd.core.estimator import FitConfig, delay_weights

    cfg = FitConfig()
    window = np.array([0.8e-3, 2.8e-3, 0.8e-3, 2.8e-3, 0.8e-3, 2.8e-3, 0.8e-3, 2.8e-3])
    typical = window == 2.8e-3
    own = delay_weights(window, cfg)
    assert own[typical].max() < 0.01 * own[~typical].min()  # what it did: the minority wins
    floored = delay_weights(window, cfg, typical_delay=2.8e-3)
    assert floored[typical] == pytest.approx(floored[~typical])
    busy = np.array([3.0e-3, 3.4e-3, 3.1e-3, 3.6e-3, 3.2e-3])
    assert delay_weights(busy, cfg, typical_delay=2.8e-3) == pytest.approx(delay_weights(busy, cfg))


def test_a_reply_from_a_faster_route_weighs_as_one_queued_by_the_difference() -> None:
    """Past the spread of the track's delays a faster reply came by another route, whose
    offset may sit half the difference away (the real trace: 2 ms faster, 1 ms lower); it
    weighs as a reply queued by that much. Within the spread, and on a path with one route,
    faster replies keep their full weight: there the fastest are the least queued."""
    import numpy as np

    from chronotickd.core.estimator import FitConfig, delay_weights

    cfg = FitConfig()
    window = np.array([2.78e-3, 2.80e-3, 0.80e-3, 2.76e-3, 0.75e-3, 2.82e-3, 2.74e-3, 2.79e-3])
    w = delay_weights(window, cfg, typical_delay=2.78e-3, delay_spread=30e-6)
    fast = window < 1e-3
    assert w[fast].max() < 1e-3 * w[~fast].min()
    assert delay_weights(window, FitConfig(route_k=0.0), 2.78e-3, 30e-6)[fast] == pytest.approx(
        w[~fast].max())  # what it did: full weight for the other route
    # one route, exponential queueing: every reply at or below the median keeps full weight
    rng = np.random.default_rng(3)
    one = 0.8e-3 + rng.exponential(200e-6, 64)
    med = float(np.median(one))
    mad = 1.4826 * float(np.median(np.abs(one - med)))
    w1 = delay_weights(one, cfg, typical_delay=med, delay_spread=mad)
    assert w1[one <= med] == pytest.approx(w1.max())


def test_a_window_left_with_one_weighted_sample_keeps_a_sane_slope() -> None:
    """The real trace at 180 s polls, one candidate window of 8: six replies from the fast
    route (weighted as queued by the route rule) and two typical ones; the robust pass
    rejected all but one. A least-squares slope through one sample is the rounding error
    of its reference time: it served 2.2e7 s/s (an offset 3e10 s off, with a bound wider
    still). A slope needs two samples with weight; otherwise the robust start's stays."""
    import numpy as np

    from chronotickd.core.estimator import FitConfig, fit_arrays

    t = np.array([59207.54511, 59387.54517, 59567.54518, 59747.54517, 60107.54519,
                  60647.54518, 60827.54521, 61009.54519])
    y = np.array([-0.000236273, -0.00122118, -0.000160456, -0.000966787, -0.001043558,
                  -0.000912189, -0.000926971, -0.000659227])
    d = np.array([0.002836704, 0.000736237, 0.002767086, 0.001067638, 0.000757694,
                  0.000844955, 0.000732422, 0.001169682])
    fit = fit_arrays(t, y, d, d / 2, FitConfig(), None, False, 0.0, 0.002758503,
                     6.751389750000026e-05)
    assert fit is not None
    assert abs(fit.freq) < 100e-6  # a crystal's tolerance, not seconds per second
    assert abs(fit.predict(t[-1] + 180.0)) < 5e-3
    assert math.isfinite(fit.var_freq) and fit.var_freq < (100e-6) ** 2


def test_past_the_void_a_free_running_clock_is_held_over_and_a_kept_one_is_not() -> None:
    """Two hours without a reply (the held-out ``outage-long`` clock, 10 ppm): past the
    void the answer is unsynchronized with the kernel's 16 s bound either way, but its
    midpoint was the system clock, 72 ms from the truth, where the last line extrapolated
    is within a millisecond (15 ms against 0.37 ms MAE at 16 s polls, docs/heldout.md).
    On a host another daemon keeps on time (δ steered, its clock agreeing with the
    measurements) the system clock is the better guess and stays."""
    from chronotickd.core.timebase import ClockReading

    def past_the_void(steered: bool) -> tuple[float, float, Status, str]:
        eng = Engine()
        freq = 10e-6  # the oscillator against the reference
        rate = freq if steered else 0.0  # REALTIME steered onto the reference, or left alone
        for k in range(0, 601, 2):
            eng.observe_clock(ClockReading(float(k), k + rate * k, 0.0))
        for i in range(32):
            t = 600.0 + 64.0 * i
            eng.observe_clock(ClockReading(t, t + rate * t, 0.0))
            eng.add(Measurement(t, freq * t + (3e-5 if i % 2 else -3e-5), 1e-3, 5e-4))
        t = 600.0 + 64.0 * 31 + 7200.0
        reading = ClockReading(t, t + rate * t, 0.0)
        eng.observe_clock(reading)
        state = eng.snapshot(reading)
        off, bound, status, source, _as_of, _void = state.answer(reading.raw, reading.real)
        back = state.at(reading.real, reading)  # retrospective, for the same instant
        assert (back.status, back.source) == (status, source)
        assert abs(back.offset - off) < 1e-6 and back.bound >= KERNEL_UNSYNC_MAXERROR_S
        return off, bound, status, source

    off, bound, status, source = past_the_void(False)
    truth = 10e-6 * (600.0 + 64.0 * 31 + 7200.0)  # reference − system: 98 ms
    assert status is Status.UNSYNCHRONIZED and bound >= KERNEL_UNSYNC_MAXERROR_S
    assert abs(off - truth) < 1e-3 and source == "ntp"  # the line held over, not 0
    off, bound, status, source = past_the_void(True)
    assert (off, status, source) == (0.0, Status.UNSYNCHRONIZED, "system")
    assert bound == KERNEL_UNSYNC_MAXERROR_S
