"""The adaptive poll policy (core/poll_policy.py, issue 13): with the engine's judgement of
each sample it lengthens while predictions hold, shortens on large residuals, bursts to
confirm a suspected step at long polls, and never goes below minpoll or above maxpoll.
Without that judgement it is chrony's iburst + doubling (tests/test_ntp_source.py)."""

from __future__ import annotations

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
