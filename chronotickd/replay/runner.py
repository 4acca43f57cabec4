"""Walk a trace in time order: feed polls, ask for answers at the other rows, score them."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from chronotickd.core.measurement import Measurement
from chronotickd.replay.methods import CLASSICAL, MethodUnavailable, default_method, make_method
from chronotickd.replay.metrics import score
from chronotickd.replay.trace import Trace
from chronotickd.replay.truth import centered_median

DEFAULT_POLL_S = 64.0


@dataclass
class MethodRun:
    name: str
    offset: np.ndarray  # answers at the scored rows
    bound: np.ndarray
    seconds: float  # time spent inside the method (observe + answer)
    metrics: dict[str, float | int]

    @property
    def median_bound(self) -> float:
        return float(np.median(self.bound)) if len(self.bound) else math.nan

    @property
    def rows_per_s(self) -> float:
        return self._rows / self.seconds if self.seconds > 0 else math.inf

    _rows: int = 0


@dataclass
class ReplayResult:
    trace: Trace
    poll_s: float
    polled: np.ndarray  # bool per row: a poll instant (measurement fed when present)
    scored: np.ndarray  # bool per row: answer scored there
    truth: np.ndarray  # per row (NaN where unknown)
    truth_kind: str  # "column NAME" or "centered median ±60 s of held-out rows"
    default_method: str
    runs: dict[str, MethodRun] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {
            "trace": self.trace.path,
            "poll_s": self.poll_s,
            "default_method": self.default_method,
            "methods": {name: run.metrics for name, run in self.runs.items()},
        }
        if self.unavailable:
            out["unavailable"] = dict(self.unavailable)
        return out


class Progress:
    """A plain-text bar on stderr, redrawn at most every 0.2 s (no dependency)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.stream = stream or sys.stderr
        self.width = width
        self.last = 0.0
        self.start = time.perf_counter()

    def update(self, done: int, label: str) -> None:
        now = time.perf_counter()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * self.width)
        self.stream.write(f"\r[{bar:<{self.width}}] {frac * 100:5.1f}% {label:<14}"
                          f" {now - self.start:6.1f} s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def poll_rows(t: np.ndarray, offset: np.ndarray, poll_s: float) -> np.ndarray:
    """The first row of each ``poll_s`` slot after the trace start is a poll instant.

    A poll instant whose row has no measurement is a failed poll: nothing is fed, and the
    methods answer from older data until the next slot (as the daemon would).
    """
    slot = np.floor((t - t[0]) / poll_s + 1e-9).astype(np.int64)
    first = np.concatenate(([True], slot[1:] != slot[:-1]))
    return first


def replay(
    trace: Trace,
    poll_s: float = DEFAULT_POLL_S,
    methods: Sequence[str] = CLASSICAL,
    progress: bool = False,
    stream: TextIO | None = None,
) -> ReplayResult:
    """Replay ``trace`` through each method (each sees the same polls, in time order)."""
    if poll_s <= 0:
        raise ValueError(f"poll must be positive, got {poll_s}")
    t = trace.t
    polled = poll_rows(t, trace.offset, poll_s)
    if trace.truth is not None:
        truth = trace.truth
        kind = f"column {trace.truth_col}"
    else:
        truth = centered_median(t, trace.offset, ~polled)
        kind = "centered median ±60 s of held-out rows"
    scored = ~polled & np.isfinite(truth)
    result = ReplayResult(trace, poll_s, polled, scored, truth, kind, default_method())

    # one event list shared by all methods: a Measurement to feed, or a time to answer; methods
    # on the time base get their own copy of the measurements (offset + δ, against the
    # oscillator) and each answered row's δ
    delay = np.where(np.isfinite(trace.delay), trace.delay, 0.0)
    deltas = trace.deltas()
    events: list[Measurement | float] = []
    tb_events: list[tuple[Measurement, float] | float] = []
    for i in range(len(t)):
        if polled[i]:
            if math.isfinite(trace.offset[i]):
                ti, oi, di = float(t[i]), float(trace.offset[i]), float(delay[i])
                events.append(Measurement.from_ntp(ti, oi, di))
                tb_events.append((Measurement.from_ntp(ti, oi + float(deltas[i]), di),
                                  float(deltas[i])))
        elif scored[i]:
            events.append(float(t[i]))
            tb_events.append(float(t[i]))
    answer_deltas = [float(d) for d in deltas[scored]]
    n_scored = int(scored.sum())
    names = list(dict.fromkeys(methods))
    bar = Progress(len(events) * len(names), stream) if progress else None
    done = 0
    for name in names:
        try:
            method = make_method(name)
        except MethodUnavailable as exc:
            result.unavailable[name] = str(exc)
            continue
        off = np.empty(n_scored)
        bnd = np.empty(n_scored)
        observe, answer = method.observe, method.answer
        timebase = getattr(method, "timebase", False)
        evs: list = tb_events if timebase else events
        answer_delta = method.answer_delta if timebase else None  # type: ignore[attr-defined]
        observe_delta = method.observe_delta if timebase else None  # type: ignore[attr-defined]
        j = 0
        spent = 0.0
        chunk = 4096
        try:
            for start in range(0, len(evs), chunk):
                t0 = time.perf_counter()
                for ev in evs[start:start + chunk]:
                    if type(ev) is float:
                        if answer_delta is None:
                            off[j], bnd[j] = answer(ev)
                        else:
                            off[j], bnd[j] = answer_delta(ev, answer_deltas[j])
                        j += 1
                    elif observe_delta is not None:
                        observe_delta(*ev)
                    else:
                        observe(ev)
                spent += time.perf_counter() - t0
                done += min(chunk, len(evs) - start)
                if bar:
                    bar.update(done, name)
        except MethodUnavailable as exc:  # e.g. a model that fails to load on first use
            result.unavailable[name] = str(exc)
            continue
        run = MethodRun(name, off, bnd, spent, score(off, bnd, truth[scored]))
        run._rows = len(t)
        result.runs[name] = run
    if bar:
        bar.close()
    return result
