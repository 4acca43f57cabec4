"""The forecasting state machine shared by the daemon's worker and the replay: pure, no threads.

``observe(m, engine_offset)`` first scores every component's earlier prediction for ``m.t``
(the engine's from its state *before* ``m``), then appends ``m`` to the context. ``refresh``
re-runs a forecaster only when its context changed. The context holds measurements only: a
forecast is never appended to it (``context()`` returns copies of the measured values).
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
        self.y: deque[float] = deque(maxlen=HISTORY)
        self.forecasts: dict[str, Forecast] = {}
        self.dirty: set[str] = set()
        self.state = FusionState()
        self.errors: dict[str, str] = {}  # last inference failure per model

    def observe(self, m: Measurement, engine_offset: float | None) -> None:
        """Score predictions for ``m`` (made before it), then add ``m`` to the context."""
        if self.source is not None and m.source != self.source:
            self.t.clear()
            self.y.clear()
            self.forecasts = {}
        self.source = m.source
        if self.t and m.t <= self.t[-1]:
            return
        if engine_offset is not None:
            preds: dict[str, float | None] = {ENGINE: engine_offset}
            for name in self.forecasters:
                fc = self.state.forecasts.get(name)
                preds[name] = fc.offset(m.t) if fc is not None else None
            preds[FUSED] = fuse(self.state, engine_offset, 0.0, m.t)[0]
            self.calibration.score(preds, m.offset)
        self.t.append(m.t)
        self.y.append(m.offset)
        self.dirty = set(self.forecasters)
        self.state = self.calibration.state(self.forecasts)

    def context(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.t), np.array(self.y)

    def refresh(self, name: str, now: float | None = None) -> bool:
        """Re-forecast ``name`` if a measurement arrived since its last run; True if it ran."""
        if name not in self.dirty:
            return False
        self.dirty.discard(name)
        t, y = self.context()
        try:
            fc = self.forecasters[name].predict(t, y, now)
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
