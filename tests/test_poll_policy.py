"""The adaptive poll policy (core/poll_policy.py, issue 13): with the engine's judgement of
each sample it lengthens while predictions hold, shortens on large residuals, bursts to
confirm a suspected step at long polls, and never goes below minpoll or above maxpoll.
Without that judgement it is chrony's iburst + doubling (tests/test_ntp_source.py)."""

from __future__ import annotations

import itertools

import pytest

from chronotickd.core.poll_policy import PollConfig, PollPolicy

CFG = PollConfig(minpoll_s=16, maxpoll_s=1024, burst=4, burst_interval_s=2)


def _run(p: PollPolicy, n: int, outcome: str, ratio: float, now: float = 0.0) -> list[float]:
    """``n`` results at residual/bound = ``ratio``; returns the gaps between polls."""
    gaps = []
    for _ in range(n):
        nxt = p.on_result(now, outcome, ratio, 1.0)
        gaps.append(nxt - now)
        now = nxt
    return gaps


def test_initial_burst_then_minpoll() -> None:
    gaps = _run(PollPolicy(CFG), 5, "accepted", 0.7)
    assert gaps == [2.0, 2.0, 2.0, 16.0, 16.0]


def test_lengthens_while_predictions_hold_up_to_maxpoll() -> None:
    p = PollPolicy(CFG)
    gaps = _run(p, 60, "accepted", 0.1)
    assert p.interval_s == 1024.0 and max(gaps) == 1024.0
    assert gaps[3:] == sorted(gaps[3:])


def test_keeps_the_interval_when_residuals_are_middling() -> None:
    """Residuals between half the bound and the bound: neither lengthen nor shorten."""
    p = PollPolicy(CFG)
    _run(p, 20, "accepted", 0.7)
    assert p.interval_s == 16.0


def test_shortens_on_large_residuals_never_below_minpoll() -> None:
    p = PollPolicy(CFG)
    _run(p, 60, "accepted", 0.1)
    gaps = _run(p, 3, "accepted", 2.0, now=1e5)
    assert gaps == [512.0, 256.0, 128.0]
    _run(p, 20, "accepted", 2.0, now=2e5)
    assert p.interval_s == 16.0


def test_an_outlier_at_a_long_interval_asks_for_a_confirming_burst() -> None:
    p = PollPolicy(CFG)
    _run(p, 60, "accepted", 0.1)
    assert p.interval_s == 1024.0
    now = 1e5
    nxt = p.on_result(now, "outlier", 5.0, 1.0)
    assert nxt - now == 2.0  # confirm at once, not a whole interval later
    assert _run(p, 2, "accepted", 0.7, now=nxt) == [2.0, 512.0]  # then half the interval
    # at a short interval an outlier is just an outlier: no burst
    q = PollPolicy(CFG)
    _run(q, 10, "accepted", 0.7)
    assert q.on_result(0.0, "outlier", 5.0, 1.0) == 16.0


def test_a_step_asks_for_a_burst() -> None:
    p = PollPolicy(CFG)
    _run(p, 60, "accepted", 0.1)
    gaps = _run(p, 4, "step", 5.0, now=1e5)
    assert gaps[0] == 2.0


def test_rejects_unknown_outcome() -> None:
    with pytest.raises(ValueError, match="outcome"):
        PollPolicy(CFG).on_result(0.0, "maybe")


def test_judged_polling_backs_off_only_to_a_quarter_of_maxpoll_when_nobody_answers() -> None:
    p = PollPolicy(CFG)
    _run(p, 60, "accepted", 0.1)  # judged: lengthened to maxpoll
    _run(p, 2, "accepted", 2.0, now=1e5)  # shortened to 256
    gaps = _run(p, 6, "no_reply", 0.0, now=2e5)
    assert max(gaps) == 256.0  # not 1024: an outage's end is seen within minutes
    plain = PollPolicy(CFG)  # chrony's back-off without the engine's judgement
    now, gaps = 0.0, []
    for _ in range(12):
        nxt = plain.on_result(now, "no_reply")
        gaps.append(nxt - now)
        now = nxt
    assert max(gaps) == 1024.0


def test_replay_polls_when_the_policy_asks_and_counts_every_request() -> None:
    """Method-chosen poll times on a dense trace: the first row at or after the requested
    time is polled; a row without a reply is a poll that got none."""
    import numpy as np

    from chronotickd.replay.adaptive import replay_adaptive
    from chronotickd.replay.trace import Trace

    t = np.arange(0.0, 4000.0, 2.0)
    truth = 1e-3 + 5e-6 * t
    offset = truth.copy()
    offset[(t > 1000) & (t < 1400)] = np.nan  # an outage
    tr = Trace("dense", t, offset, np.full(len(t), 1e-3), truth, "true_offset")
    run = replay_adaptive(tr, "engine", PollConfig(minpoll_s=16, maxpoll_s=1024))
    polled = t[run.polled]
    assert list(polled[:5]) == [0.0, 2.0, 4.0, 6.0, 22.0]  # the burst, then minpoll
    assert run.polls == len(polled) < len(t) / 8
    assert np.isnan(offset[run.polled]).any()  # polls during the outage are counted
    assert run.metrics["coverage"] >= 0.99 and run.metrics["mae_s"] < 20e-6


def test_a_shifted_fixed_grid_polls_where_it_is_told() -> None:
    """bench_poll_phase's fixed grid through replay_adaptive's ``schedule``: the start, then
    every interval from the shifted phase (the spread it measures rests on this)."""
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.bench_poll_phase import FixedGrid
    from chronotickd.replay.adaptive import replay_adaptive
    from chronotickd.replay.trace import Trace

    t = np.arange(100.0, 1100.0, 1.0)
    truth = 1e-3 + 5e-6 * (t - 100.0)
    tr = Trace("dense", t, truth.copy(), np.full(len(t), 1e-3), truth, "true_offset")
    run = replay_adaptive(tr, "engine", schedule=FixedGrid(100.0, 64.0, 16.0))
    assert list(t[run.polled][:4]) == [100.0, 116.0, 180.0, 244.0]
    assert np.all(np.diff(t[run.polled][1:]) == 64.0)


BUDGET = PollConfig(minpoll_s=16, maxpoll_s=1024, burst=4, burst_interval_s=2, budget_s=64)


def test_a_budget_is_spent_at_the_start_then_repaid_and_never_exceeded() -> None:
    """Burst, a ramp 16 → 32 → 64 s, intervals stretched until the borrowed polls are
    earned back; over 6 h no more polls than a fixed 64 s poll sends."""
    p = PollPolicy(BUDGET)
    now, times = 0.0, [0.0]
    while now < 6 * 3600:
        now = p.on_result(now, "accepted", 0.7, 1.0)
        times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [2.0, 2.0, 2.0, 16.0, 32.0]
    assert gaps[5] == 64.0  # not stretched past the span polled so far (54 s)
    assert max(gaps[6:30]) > 64.0  # then repaying
    assert gaps[-1] == pytest.approx(64.0)  # repaid: the budget's own interval
    fixed = 6 * 3600 // 64 + 1
    assert len([t for t in times if t <= 6 * 3600]) <= fixed


def test_a_repaid_budget_polls_on_a_fixed_polls_grid_and_spends_what_it_would() -> None:
    """A token bucket anchored at the first poll: once the start's debt is repaid the polls
    fall on first + k·64 s, a fixed 64 s poll's own times (so the two measure the same
    instants); a reply that came 1.5 s late does not shift the polls after it; and over 6 h
    the policy spends exactly the polls a fixed 64 s poll does (its first one included)."""
    p = PollPolicy(BUDGET)
    now, times = 0.0, [0.0]
    while True:
        nxt = p.on_result(now, "accepted", 0.7, 1.0)
        if nxt > 6 * 3600:
            break
        now = nxt + (1.5 if len(times) == 150 else 0.0)  # one answered late
        times.append(now)
    assert len(times) == 6 * 3600 // 64 + 1
    late = [t for t in times[100:] if t % 64.0 != 0.0]
    assert len(late) == 1  # the late one alone; the one after it is back on the grid
    assert all(t % 64.0 == 0.0 for t in times[-100:])


def test_under_a_budget_large_residuals_spend_only_saved_credit() -> None:
    p = PollPolicy(BUDGET)
    now = sum(_run(p, 40, "accepted", 0.7))
    assert p.credit <= 0.0
    assert _run(p, 1, "accepted", 5.0, now=now)[0] >= 64.0 - 1e-9  # nothing saved: no rush
    q = PollPolicy(BUDGET)
    now = sum(_run(q, 100, "accepted", 0.7))  # the start's debt repaid
    now += sum(_run(q, 2, "kod_rate", 0.0, now=now))  # a RATE kiss: the back-off saves
    assert q.credit > 0
    gaps = _run(q, 5, "accepted", 5.0, now=now)  # ... which large residuals spend
    assert min(gaps) < 64.0 and gaps == sorted(gaps, reverse=True)


def test_a_budget_bounds_the_confirming_bursts() -> None:
    p = PollPolicy(BUDGET)
    _run(p, 40, "accepted", 0.7)
    bursts = 0
    now = 1e5
    for _ in range(30):  # a storm of "steps": each asks for a burst
        nxt = p.on_result(now, "step", 5.0, 1.0)
        bursts += nxt - now == 2.0
        now = nxt
    assert p.credit >= -8.0 - 1.0  # DEBT_MAX (plus the poll in flight)
    assert bursts < 30


def test_a_budget_polls_a_silent_server_at_its_own_interval() -> None:
    p = PollPolicy(BUDGET)
    now = sum(_run(p, 40, "accepted", 0.7))
    gaps = _run(p, 30, "no_reply", 0.0, now=now)
    assert min(gaps) >= 64.0 and max(gaps) < 70.0  # (the start's debt still being repaid)


def test_the_first_reply_after_a_silence_restarts_the_ramp_and_a_lost_one_does_not() -> None:
    """After 8 polls in a row got no reply (an outage, not a lost packet) the next reply
    starts the ramp again, 16 → 32 → 64 s, borrowed from the budget like the start's (ntpd's
    iburst on a server that was unreachable): the clock's frequency moved while nobody
    answered (the matrix's `outage` over 24 seeds: 1.001 → 0.971 × fixed 64 s). One or a
    few lost replies do not; and the budget still holds over the run."""

    def gaps_after(silent: int) -> list[float]:
        p = PollPolicy(BUDGET)
        now = sum(_run(p, 150, "accepted", 0.7))  # the start's debt repaid: on the grid
        now += sum(_run(p, silent, "no_reply", 0.0, now=now))
        return _run(p, 4, "accepted", 0.7, now=now)

    ramp = gaps_after(8)
    assert ramp[:2] == [16.0, 32.0] and 64.0 <= ramp[2] <= 68.0  # (then repaying)
    assert gaps_after(7)[0] == 64.0 and gaps_after(2)[0] == 64.0
    p = PollPolicy(BUDGET)
    now, times = 0.0, [0.0]
    while now < 6 * 3600:  # two outages of 10 polls: two ramps, repaid
        silent = 1000 < now < 1700 or 9000 < now < 9700
        now = p.on_result(now, "no_reply" if silent else "accepted", 0.7, 1.0)
        times.append(now)
    assert len([t for t in times if t <= 6 * 3600]) <= 6 * 3600 // 64 + 1


def test_without_confirming_bursts_a_surprise_halves_the_interval_only() -> None:
    """A public server (``confirm_bursts`` off) gets its burst at start only: a step or an
    outlier at a long interval shortens the interval, never below minpoll, with no burst."""
    p = PollPolicy(PollConfig(minpoll_s=64.0, maxpoll_s=1024.0, burst=4,
                              confirm_bursts=False))
    now = 0.0
    for _ in range(40):  # grow the interval: predictions hold
        now = p.on_result(now, "accepted", 0.0, 1.0)
    assert p.interval_s >= 256.0
    gaps = []
    for outcome in ("outlier", "step", "step", "step", "step"):
        nxt = p.on_result(now, outcome, 5.0, 1.0)
        gaps.append(nxt - now)
        now = nxt
    assert min(gaps) >= 64.0 and gaps[-1] == 64.0
    q = PollPolicy(PollConfig(minpoll_s=64.0, maxpoll_s=1024.0, burst=4))  # a private one
    for _ in range(40):
        now = q.on_result(now, "accepted", 0.0, 1.0)
    assert q.on_result(now, "step", 5.0, 1.0) - now == 2.0
