"""Replay with method-chosen poll times: an adaptive ``PollPolicy`` decides when to poll.

On a dense trace (a measurement every row, as the recorded traces and the simulator write
them) a requested poll time is served by the first row at or after it; a row without a
measurement is a poll that got no reply. Every other row is answered and scored (where the
truth is known). Polls spent are the rows polled, replies or not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from chronotickd.core.measurement import Measurement
from chronotickd.core.poll_policy import OUTCOMES, PollConfig, PollPolicy
from chronotickd.replay.methods import make_method
from chronotickd.replay.metrics import score
from chronotickd.replay.trace import Trace
from chronotickd.replay.truth import centered_median


@dataclass
class AdaptiveRun:
    method: str
    polls: int
    polled: np.ndarray  # bool per row
    metrics: dict[str, float | int]
    seconds: float


class PollSchedule(Protocol):
    """What chooses poll times: ``PollPolicy``, or a bench's fixed grid."""

    def on_result(self, now: float, outcome: str, residual_s: float = 0.0,
                  bound_s: float = 0.0) -> float: ...


def replay_adaptive(trace: Trace, method: str = "engine", cfg: PollConfig | None = None,
                    schedule: PollSchedule | None = None) -> AdaptiveRun:
    """Replay ``trace`` through ``method`` with poll times chosen by a ``PollPolicy``.

    The policy hears each poll's outcome: the method's verdict where it has one
    (``last_verdict``, the engine's accepted/outlier/step) and the residual against the
    prediction it served, judged against the noise scale it reports (``poll_feedback``).
    ``schedule`` replaces the policy (``benchmarks/bench_poll_phase.py``: fixed grids).
    """
    policy = schedule or PollPolicy(cfg or PollConfig())
    m_obj = make_method(method)
    feedback = getattr(m_obj, "poll_feedback", None)
    t = trace.t
    n = len(t)
    delay = np.where(np.isfinite(trace.delay), trace.delay, 0.0)
    polled = np.zeros(n, dtype=bool)
    off = np.full(n, np.nan)
    bnd = np.full(n, np.nan)
    next_poll = float(t[0])
    observe, answer = m_obj.observe, m_obj.answer
    # a method on the time base is fed measured + δ and asked with each row's δ (runner.py)
    deltas = trace.deltas() if getattr(m_obj, "timebase", False) else None
    t0 = time.perf_counter()
    for i in range(n):
        ti = float(t[i])
        if ti >= next_poll:
            polled[i] = True
            o = float(trace.offset[i])
            if not math.isfinite(o):
                next_poll = policy.on_result(ti, "no_reply")
                continue
            if deltas is not None:
                m_obj.observe_delta(Measurement.from_ntp(ti, o + float(deltas[i]),  # type: ignore[attr-defined]
                                                         float(delay[i])), float(deltas[i]))
            else:
                observe(Measurement.from_ntp(ti, o, float(delay[i])))
            verdict = getattr(m_obj, "last_verdict", "")
            if verdict not in OUTCOMES:  # e.g. a measurement set aside near a leap
                verdict = "accepted"
            res, scale = feedback() if feedback is not None else (0.0, 0.0)
            next_poll = policy.on_result(ti, verdict, res, scale)
        elif deltas is not None:
            off[i], bnd[i] = m_obj.answer_delta(ti, float(deltas[i]))  # type: ignore[attr-defined]
        else:
            off[i], bnd[i] = answer(ti)
    spent = time.perf_counter() - t0
    truth = (trace.truth if trace.truth is not None
             else centered_median(t, trace.offset, ~polled))
    scored = ~polled & np.isfinite(truth)
    return AdaptiveRun(method, int(polled.sum()), polled,
                       score(off[scored], bnd[scored], truth[scored]), spent)
