"""``chronos-short``, ``chronos-long`` and ``fused`` for ``chronotick-replay``.

Each wraps the daemon's own code: the classical ``Engine`` for the base answer and
``ForecastCore`` (the same scoring, fusion and calibration the daemon's worker runs). In the
replay a forecaster re-runs once per poll (its context only changes then), so a run costs one
inference per model per poll, not per row.

The model is ``$CHRONOTICK_MODEL`` (a directory or HF id) when set, else the shipped one.

``DEFAULT_ON`` records whether ``fused`` met the goals on every trace measured (coverage
≥ 0.95 and MAE ≤ 1.05× ``engine``); see docs/forecasting.md for the tables.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement, Status
from chronotickd.core.state import ClockState
from chronotickd.forecast.core import LONG, SHORT, ForecastCore, ModelSpec
from chronotickd.forecast.defaults import DEFAULT_ON  # noqa: F401  (re-exported)
from chronotickd.forecast.forecaster import Forecaster
from chronotickd.forecast.fusion import ENGINE, fuse
from chronotickd.forecast.loader import load_pipeline


@functools.cache
def _pipeline() -> Any:
    return load_pipeline(os.environ.get("CHRONOTICK_MODEL") or None, threads=1)


class _ForecastMethod:
    """Engine + forecasters; ``solo`` serves one forecaster alone (with the honest bound)."""

    def __init__(self, name: str, specs: list[ModelSpec], solo: bool) -> None:
        self.name = name
        pipe = _pipeline()
        self.core = ForecastCore([Forecaster(s.name, pipe, s.context, s.horizon_s,
                                             s.refresh_s) for s in specs])
        self.solo = specs[0].name if solo else None
        self.engine = Engine()
        self.state: ClockState = self.engine.snapshot(0.0)

    def observe(self, m: Measurement) -> None:
        before = self.state.query(m.t)
        synced = before.status != Status.UNSYNCHRONIZED
        self.core.observe(m, before.offset if synced else None)
        self.engine.add(m)
        self.state = self.engine.snapshot(m.t)
        self.core.refresh_all(m.t)

    def answer(self, t: float) -> tuple[float, float]:
        a = self.state.query(t)
        if a.status == Status.UNSYNCHRONIZED:
            return a.offset, a.bound
        if self.solo is not None:
            fc = self.core.forecasts.get(self.solo)
            if fc is None:
                return a.offset, a.bound
            off = fc.offset(t)
            return off, a.bound + abs(off - a.offset)
        return fuse(self.core.state, a.offset, a.bound, t)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.core.state.weights or {ENGINE: 1.0})


def make_chronos_short() -> _ForecastMethod:
    return _ForecastMethod("chronos-short", [SHORT], solo=True)


def make_chronos_long() -> _ForecastMethod:
    return _ForecastMethod("chronos-long", [LONG], solo=True)


def make_fused() -> _ForecastMethod:
    return _ForecastMethod("fused", [SHORT, LONG], solo=False)
