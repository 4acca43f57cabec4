"""The forecasting state machine shared by the daemon's worker and the replay: pure, no threads.

``observe(m, engine_offset)`` first scores every component's earlier prediction for ``m.t``
(the engine's from its state *before* ``m``), then appends ``m`` and its engine residual
``m.offset − engine_offset`` to the context (NaN while the engine has no answer). ``refresh``
re-runs a forecaster only when its context changed. The context holds measurements and the
engine's predictions only: a forecast is never appended to it (``context()`` returns copies).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from chronotickd.core.measurement import Measurement
from chronotickd.forecast.forecaster import Forecast, Forecaster
from chronotickd.forecast.fusion import ENGINE, FUSED, Calibration, FusionState, fuse

HISTORY = 512  # ≥ the longest context


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    context: int
    horizon_s: float
    refresh_s: float


SHORT = ModelSpec("short", 100, 5.0, 1.0)
LONG = ModelSpec("long", 300, 60.0, 30.0)


class ForecastCore:
    def __init__(self, forecasters: list[Forecaster], window: int = 256) -> None:
        self.forecasters = {f.name: f for f in forecasters}
        self.calibration = Calibration(tuple(self.forecasters), window=window)
        self.source: str | None = None
        self.t: deque[float] = deque(maxlen=HISTORY)
        self.y: deque[float] = deque(maxlen=HISTORY)  # measured offsets
        self.r: deque[float] = deque(maxlen=HISTORY)  # engine residuals (model input)
        self.forecasts: dict[str, Forecast] = {}
        self.dirty: set[str] = set()
        self.state = FusionState()
        self.errors: dict[str, str] = {}  # last inference failure per model

    def observe(self, m: Measurement, engine_offset: float | None) -> None:
        """Score predictions for ``m`` (made before it), then add ``m`` to the context."""
        if self.source is not None and m.source != self.source:
            self.t.clear()
            self.y.clear()
            self.r.clear()
            self.forecasts = {}
        self.source = m.source
        if self.t and m.t <= self.t[-1]:
            return
        if engine_offset is not None:
            preds: dict[str, float | None] = {ENGINE: engine_offset}
            for name in self.forecasters:
                fc = self.state.forecasts.get(name)
                preds[name] = fc.offset(m.t, engine_offset) if fc is not None else None
            preds[FUSED] = fuse(self.state, engine_offset, 0.0, m.t)[0]
            self.calibration.score(preds, m.offset)
        self.t.append(m.t)
        self.y.append(m.offset)
        self.r.append(m.offset - engine_offset if engine_offset is not None else float("nan"))
        self.dirty = set(self.forecasters)
        self.state = self.calibration.state(self.forecasts)

    def context(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(measurement times, measured offsets, engine residuals): what forecasters see."""
        return np.array(self.t), np.array(self.y), np.array(self.r)

    def refresh(self, name: str, now: float | None = None) -> bool:
        """Re-forecast ``name`` if a measurement arrived since its last run; True if it ran."""
        if name not in self.dirty:
            return False
        self.dirty.discard(name)
        t, y, r = self.context()
        try:
            fc = self.forecasters[name].predict(t, y, now, r)
        except Exception as exc:  # a broken model must not take the clock down
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            fc = None
        forecasts = dict(self.forecasts)
        if fc is None:
            forecasts.pop(name, None)
        else:
            forecasts[name] = fc
        self.forecasts = forecasts
        self.state = self.calibration.state(forecasts)
        return True

    def refresh_all(self, now: float | None = None) -> None:
        for name in self.forecasters:
            self.refresh(name, now)
