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
from chronotickd.forecast.core import LONG, SHORT, ForecastCore, ModelSpec
from chronotickd.forecast.defaults import DEFAULT_ON  # noqa: F401  (re-exported)
from chronotickd.forecast.forecaster import Forecaster
from chronotickd.forecast.fusion import ENGINE, fuse
from chronotickd.forecast.loader import load_pipeline
from chronotickd.replay.methods import EngineMethod


@functools.cache
def _pipeline() -> Any:
    return load_pipeline(os.environ.get("CHRONOTICK_MODEL") or None, threads=1)


class _ForecastMethod:
    """Engine + forecasters; ``solo`` serves one forecaster alone (with the honest bound).

    The engine is ``EngineMethod``, the bench's ``engine`` itself (on the time base: fed
    ``measured + δ``, answering through ``answer_delta``), so ``fused`` differs from
    ``engine`` only by the forecasters' corrections. The forecasters see the engine's
    residuals: ``θ measured − θ predicted`` by the state before the measurement, which does
    not depend on δ (the daemon's worker computes the same from the published states).
    """

    timebase = True

    def __init__(self, name: str, specs: list[ModelSpec], solo: bool) -> None:
        self.name = name
        pipe = _pipeline()
        self.core = ForecastCore([Forecaster(s.name, pipe, s.context, s.horizon_s,
                                             s.refresh_s) for s in specs])
        self.solo = specs[0].name if solo else None
        self.base = EngineMethod(Engine())

    def _score(self, m: Measurement) -> None:
        before = self.base.state.query(m.t)
        synced = before.status != Status.UNSYNCHRONIZED
        self.core.observe(m, before.offset if synced else None)

    def observe(self, m: Measurement) -> None:
        self._score(m)
        self.base.observe(m)
        self.core.refresh_all(m.t)

    def observe_delta(self, m: Measurement, delta: float) -> None:
        self._score(m)
        self.base.observe_delta(m, delta)
        self.core.refresh_all(m.t)

    def _serve(self, t: float, off: float, bound: float, status: Status) -> tuple[float, float]:
        if status == Status.UNSYNCHRONIZED:
            return off, bound
        if self.solo is not None:
            fc = self.core.forecasts.get(self.solo)
            if fc is None:
                return off, bound
            o = fc.offset(t, off)
            return o, bound + abs(o - off)
        return fuse(self.core.state, off, bound, t)

    def answer(self, t: float) -> tuple[float, float]:
        a = self.base.state.query(t)
        return self._serve(t, a.offset, a.bound, a.status)

    def answer_delta(self, t: float, delta: float) -> tuple[float, float]:
        self.base.read_clock(t, delta)  # the engine's clock reads, as the bench's engine
        off, bound, status, *_ = self.base.state.answer_delta(t, delta)
        if status == Status.UNSYNCHRONIZED:
            return off, bound
        # forecasts are of θ on the engine's raw axis: fuse there, apply δ after (FusedClock)
        theta, bound = self._serve(t, off + delta, bound, status)
        return theta - delta, bound

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.core.state.weights or {ENGINE: 1.0})


def make_chronos_short() -> _ForecastMethod:
    return _ForecastMethod("chronos-short", [SHORT], solo=True)


def make_chronos_long() -> _ForecastMethod:
    return _ForecastMethod("chronos-long", [LONG], solo=True)


def make_fused() -> _ForecastMethod:
    return _ForecastMethod("fused", [SHORT, LONG], solo=False)
