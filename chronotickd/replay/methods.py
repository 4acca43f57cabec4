"""Methods the bench compares, behind one small interface, and their registry.

A method sees the polled measurements in time order (``observe``) and answers, at any later
local time, an offset and the half-width of the interval it promises contains the true offset
(``answer``). Baselines are deliberately simple, each with a simple honest-looking bound so that
coverage compares too. ``engine`` is the daemon's own code path.

Forecasting methods live in ``chronotickd.forecast.replay_methods`` and are resolved lazily:
when that module (or torch) is missing, the method is reported unavailable and the run goes on.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from chronotickd.core.engine import Engine
from chronotickd.core.experts import theil_sen_line
from chronotickd.core.measurement import Measurement
from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S, ClockState
from chronotickd.core.timebase import ClockReading

# How fast a baseline lets its bound grow with age: the engine's default max_drift_ppm.
BASELINE_DRIFT = 1e-6
CLOCK_READ_S = 16.0  # replay: how often a time-base method's engine sees the clock reading
UNKNOWN = (0.0, KERNEL_UNSYNC_MAXERROR_S)  # answer before any measurement: the kernel's


@runtime_checkable
class ReplayMethod(Protocol):
    name: str

    def observe(self, m: Measurement) -> None: ...  # the poll's measurement, time order

    def answer(self, t: float) -> tuple[float, float]: ...  # (offset_s, bound_half_width_s) at t
    # a method with ``timebase = True`` models the reference against the oscillator (the time
    # axis) and also has ``observe_delta(m, delta)`` and ``answer_delta(t, delta)``: the
    # runner feeds it ``measured + δ`` with that row's δ = REALTIME − RAW and asks with each
    # row's δ; the others see the system clock's offsets only


class MethodUnavailable(RuntimeError):
    """A registered method cannot run here (e.g. its module or model is missing)."""


class _LastMeasurement:
    """Base of the baselines that only need the newest measurement."""

    name = ""

    def __init__(self) -> None:
        self.last: Measurement | None = None

    def observe(self, m: Measurement) -> None:
        self.last = m


class NoneMethod(_LastMeasurement):
    """Uncorrected clock: offset 0; bound wide enough to hold the last measured interval."""

    name = "none"

    def answer(self, t: float) -> tuple[float, float]:
        m = self.last
        if m is None:
            return UNKNOWN
        return 0.0, abs(m.offset) + m.bound + BASELINE_DRIFT * max(0.0, t - m.t)


class HoldMethod(_LastMeasurement):
    """The last polled offset, bound = its half round trip + drift allowance × age."""

    name = "hold"

    def answer(self, t: float) -> tuple[float, float]:
        m = self.last
        if m is None:
            return UNKNOWN
        return m.offset, m.bound + BASELINE_DRIFT * max(0.0, t - m.t)


class MedianMethod:
    """Median of the last ``n`` polled offsets; bound = median half round trip + drift × age."""

    name = "median"

    def __init__(self, n: int = 8) -> None:
        self.window: deque[Measurement] = deque(maxlen=n)
        self._cache: tuple[float, float, float] | None = None

    def observe(self, m: Measurement) -> None:
        self.window.append(m)
        w = self.window
        offset = float(np.median([x.offset for x in w]))
        bound = float(np.median([x.bound for x in w]))
        t_mid = 0.5 * (w[0].t + w[-1].t)
        self._cache = (offset, bound, t_mid)

    def answer(self, t: float) -> tuple[float, float]:
        if self._cache is None:
            return UNKNOWN
        offset, bound, t_mid = self._cache
        return offset, bound + BASELINE_DRIFT * max(0.0, t - t_mid)


class LinearMethod:
    """Least squares line over the last ``n`` polls; bound = mean half RTT + 3·rms + drift·age."""

    name = "linear"

    def __init__(self, n: int = 16) -> None:
        self.window: deque[Measurement] = deque(maxlen=n)
        self._fit: tuple[float, float, float, float, float] | None = None

    def observe(self, m: Measurement) -> None:
        self.window.append(m)
        t = np.array([x.t for x in self.window])
        y = np.array([x.offset for x in self.window])
        b = float(np.mean([x.bound for x in self.window]))
        t0 = float(t.mean())
        if len(t) >= 3:
            slope, icpt = np.polyfit(t - t0, y, 1)
            rms = float(np.sqrt(np.mean((y - icpt - slope * (t - t0)) ** 2)))
        else:
            slope, icpt, rms = 0.0, float(y.mean()), float(np.ptp(y))
        self._fit = (t0, float(icpt), float(slope), b + 3.0 * rms, float(t[-1]))

    def answer(self, t: float) -> tuple[float, float]:
        if self._fit is None:
            return UNKNOWN
        t0, icpt, slope, bound, t_last = self._fit
        return icpt + slope * (t - t0), bound + BASELINE_DRIFT * max(0.0, t - t_last)


class TheilSenMethod:
    """Theil–Sen line over the last ``n`` polls (median of pairwise slopes, median intercept);
    bound = median half RTT + 3·MAD-sigma of the residuals + drift·age."""

    name = "theil-sen"

    def __init__(self, n: int = 32) -> None:
        self.window: deque[Measurement] = deque(maxlen=n)
        self._fit: tuple[float, float, float, float] | None = None

    def observe(self, m: Measurement) -> None:
        self.window.append(m)
        t = np.array([x.t for x in self.window])
        y = np.array([x.offset for x in self.window])
        t_anchor, level, freq = theil_sen_line(t, y)
        res = y - level - freq * (t - t_anchor)
        spread = 1.4826 * float(np.median(np.abs(res - np.median(res))))
        b = float(np.median([x.bound for x in self.window]))
        self._fit = (t_anchor, level, freq, b + 3.0 * spread)

    def answer(self, t: float) -> tuple[float, float]:
        if self._fit is None:
            return UNKNOWN
        t0, level, freq, bound = self._fit
        return level + freq * (t - t0), bound + BASELINE_DRIFT * max(0.0, t - t0)


class EngineMethod:
    """Exactly the daemon's path: ``Engine.add`` → ``snapshot`` → ``ClockState.query``.

    The daemon republishes at least every second; the replay snapshots once after each poll.
    With one source that changes nothing the bench scores: ``query`` depends only on the fit,
    and selection with a single track always returns it (only the status text would differ).
    """

    name = "engine"
    # models θ against the oscillator like the daemon: fed ``measured + δ``, answers through
    # ``answer_delta`` (the runner passes each row's δ = REALTIME − RAW)
    timebase = True

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine or Engine()
        self._clock_read = -math.inf
        self.last_verdict = ""
        self.state: ClockState = self.engine.snapshot(0.0)

    def observe(self, m: Measurement) -> None:
        self.last_verdict = self.engine.add(m)
        self.state = self.engine.snapshot(m.t)

    def poll_feedback(self) -> tuple[float, float]:
        """(residual of the last measurement against the served prediction, noise scale),
        what the adaptive poll policy judges the prediction by."""
        return self.engine.poll_feedback("ntp")

    def answer(self, t: float) -> tuple[float, float]:
        a = self.state.query(t)
        return a.offset, a.bound

    def answer_delta(self, t: float, delta: float) -> tuple[float, float]:
        """The system clock's offset at raw time ``t`` where REALTIME − RAW = ``delta``: the
        daemon's own arithmetic (``ClockState.answer_delta``). The engine sees the clock
        reading too, as the daemon's loop does every second (here at most every
        ``CLOCK_READ_S``: the δ history feeds only slow things, such as the system rate)."""
        self.read_clock(t, delta)
        off, bound, *_ = self.state.answer_delta(t, delta)
        return off, bound

    def read_clock(self, t: float, delta: float) -> None:
        """The engine's loop reading both clocks and republishing (at most every
        ``CLOCK_READ_S`` here)."""
        if t - self._clock_read >= CLOCK_READ_S:
            self._clock_read = t
            self.engine.observe_clock(ClockReading(t, t + self.engine.epoch + delta))
            self.state = self.engine.snapshot(t)

    def observe_delta(self, m: Measurement, delta: float) -> None:
        """``observe`` for a measurement taken where REALTIME − RAW = ``delta``."""
        self._clock_read = m.t
        self.engine.observe_clock(ClockReading(m.t, m.t + self.engine.epoch + delta))
        self.observe(m)


def _engine_v1() -> ReplayMethod:
    """The engine as it was before issue 13 (frozen copy in replay/engine_v1.py)."""
    from chronotickd.replay.engine_v1 import EngineV1Method

    return EngineV1Method()


FORECAST_MODULE = "chronotickd.forecast.replay_methods"


def _lazy(attr: str) -> Callable[[], ReplayMethod]:
    """A factory that imports the forecaster module only when the method is asked for."""

    def factory() -> ReplayMethod:
        try:
            mod = importlib.import_module(FORECAST_MODULE)
        except Exception as exc:  # missing module, torch, model files...
            raise MethodUnavailable(f"{FORECAST_MODULE}: {type(exc).__name__}: {exc}") from exc
        try:
            return getattr(mod, attr)()
        except Exception as exc:
            raise MethodUnavailable(f"{FORECAST_MODULE}.{attr}: {type(exc).__name__}: {exc}"
                                    ) from exc

    factory.__name__ = attr
    return factory


METHODS: dict[str, Callable[[], ReplayMethod]] = {
    "none": NoneMethod,
    "hold": HoldMethod,
    "median": MedianMethod,
    "linear": LinearMethod,
    "theil-sen": TheilSenMethod,
    "engine": EngineMethod,
    "engine-v1": _engine_v1,
    "chronos-short": _lazy("make_chronos_short"),
    "chronos-long": _lazy("make_chronos_long"),
    "fused": _lazy("make_fused"),
}
BASELINES = ("none", "hold", "median", "linear")
CLASSICAL = (*BASELINES, "engine")


def default_method() -> str:
    """What the daemon serves by default: ``fused`` when the forecaster says it is on."""
    try:
        if importlib.util.find_spec(FORECAST_MODULE) is None:
            return "engine"
        mod = importlib.import_module(FORECAST_MODULE)
    except Exception:
        return "engine"
    return "fused" if getattr(mod, "DEFAULT_ON", False) is True else "engine"


def make_method(name: str) -> ReplayMethod:
    """Instantiate a registered method; raises ``MethodUnavailable`` with the reason."""
    factory = METHODS.get(name)
    if factory is None:
        raise MethodUnavailable(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return factory()
