"""The adaptive poll policy (core/poll_policy.py): initial burst, lengthening while the
predictions hold, shortening on large residuals, a burst on a suspected step, minpoll."""

from __future__ import annotations

import pytest

from chronotickd.core.poll_policy import PollConfig, PollPolicy


def test_initial_burst_then_minpoll() -> None:
    p = PollPolicy(PollConfig(minpoll_s=64, maxpoll_s=1024, burst=4, burst_interval_s=2))
    now = 0.0
    gaps = []
    for _ in range(5):
        nxt = p.on_result(now, "accepted", 0.0, 1.0)
        gaps.append(nxt - now)
        now = nxt
    assert gaps[:3] == [2.0, 2.0, 2.0]
    assert gaps[3] == 64.0


def _settle(p: PollPolicy, n: int, ratio: float) -> float:
    now = 0.0
    for _ in range(n):
        now = p.on_result(now, "accepted", ratio, 1.0)
    return now


def test_lengthens_while_predictions_hold_up_to_maxpoll() -> None:
    p = PollPolicy(PollConfig(minpoll_s=64, maxpoll_s=1024))
    _settle(p, 100, 0.1)
    assert p.interval_s == 1024.0


def test_shortens_on_large_residuals_never_below_minpoll() -> None:
    p = PollPolicy(PollConfig(minpoll_s=64, maxpoll_s=1024))
    _settle(p, 100, 0.1)
    now = 10_000.0
    for _ in range(20):
        now = p.on_result(now, "accepted", 2.0, 1.0)
    assert p.interval_s == 64.0


def test_suspected_step_triggers_a_burst_and_shorter_interval() -> None:
    cfg = PollConfig(minpoll_s=64, maxpoll_s=1024, burst=4, burst_interval_s=2)
    p = PollPolicy(cfg)
    _settle(p, 100, 0.1)
    assert p.interval_s == 1024.0
    now = 50_000.0
    nxt = p.on_result(now, "outlier", 5.0, 1.0)
    assert nxt - now == 2.0
    assert p.interval_s <= 256.0
    gaps = []
    for _ in range(5):
        now, nxt = nxt, p.on_result(nxt, "outlier", 5.0, 1.0)
        gaps.append(nxt - now)
    assert gaps[:3] == [2.0, 2.0, 2.0]
    assert p.interval_s == 64.0


def test_explicit_burst_request_and_no_reply_backoff() -> None:
    p = PollPolicy(PollConfig(minpoll_s=64, maxpoll_s=1024, burst=1))
    p.on_result(0.0, "accepted")
    assert p.request_burst(100.0, 3) == 102.0
    p2 = PollPolicy(PollConfig(minpoll_s=64, maxpoll_s=1024, burst=1))
    assert p2.on_result(0.0, "no_reply") == 128.0
    assert p2.on_result(128.0, "kod_rate") >= 128.0 + 128.0


def test_rejects_unknown_outcome_and_bad_limits() -> None:
    with pytest.raises(ValueError, match="outcome"):
        PollPolicy(PollConfig()).on_result(0.0, "maybe")
    with pytest.raises(ValueError, match="minpoll"):
        PollPolicy(PollConfig(minpoll_s=128, maxpoll_s=64))
