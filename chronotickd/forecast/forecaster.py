"""One forecaster (short- or long-term): residuals in, per-step residual quantiles out.

What the residual is relative to depends on what the model was trained on (``residual.py``,
the model directory's ``chronotick.json``): the engine's earlier predictions (the forecast is
a correction added to the engine's answer) or a robust line over the context (the forecast
is ``line(t) + residual(t)``).

The series is sampled once per measurement (not on a clock grid): step ``k`` of a forecast is
``k`` median spacings after the newest measurement. Re-running the model on an unchanged
context gives the same output, so refreshes without a new measurement cost nothing.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from chronotickd.forecast.residual import ENGINE_RESIDUAL, LINE, US, prepare, prepare_line

Z80 = 2.5631  # (q90 − q10) of a normal distribution in sigmas


@dataclass(frozen=True, slots=True)
class Forecast:
    """An immutable forecast; pure arithmetic. ``relative``: ``offset(t) = engine(t) +
    residual(t)``; otherwise ``offset(t) = line(t) + residual(t)``."""

    name: str
    t_last: float
    dt: float
    icpt: float  # line value at t_last (0 when relative)
    slope: float
    median: tuple[float, ...]  # residual (s) at steps 1..P
    spread: tuple[float, ...]  # (q90 − q10)/2.563 (s) at steps 1..P: the model's own sigma
    made_at: float
    context_len: int
    relative: bool = False

    def _step(self, t: float) -> tuple[int, float]:
        x = (t - self.t_last) / self.dt - 1.0  # 0 at step 1
        if x <= 0.0:
            return 0, 0.0
        n = len(self.median) - 1
        if x >= n:
            return n, 0.0
        i = int(x)
        return i, x - i

    def residual(self, t: float) -> float:
        """The forecast residual at ``t`` (step 1 held until ``t_last + dt``)."""
        i, f = self._step(t)
        m = self.median
        return m[i] if f == 0.0 else m[i] + f * (m[i + 1] - m[i])

    def offset(self, t: float, engine_offset: float) -> float:
        """The forecast offset at ``t`` given the engine's answer there."""
        if self.relative:
            return engine_offset + self.residual(t)
        return self.icpt + self.slope * (t - self.t_last) + self.residual(t)

    def sigma(self, t: float) -> float:
        i, _ = self._step(t)
        return self.spread[i]


class Forecaster:
    """Wraps a pipeline with a context length, a horizon and a refresh period."""

    def __init__(self, name: str, pipeline: Any, context: int, horizon_s: float,
                 refresh_s: float) -> None:
        self.name = name
        self.pipeline = pipeline
        self.context = context
        self.horizon_s = horizon_s
        self.refresh_s = refresh_s
        self.steps = int(getattr(pipeline, "model_prediction_length", 16))
        q = list(pipeline.quantiles)
        self._iq = (q.index(0.1), q.index(0.5), q.index(0.9))
        self.timings_ms: deque[float] = deque(maxlen=512)
        self.last_refresh: float | None = None
        self.input = getattr(pipeline, "chronotick_input", LINE)

    def predict(self, t: np.ndarray, y: np.ndarray, now: float | None = None,
                r: np.ndarray | None = None) -> Forecast | None:
        """Forecast from the last ``context`` measurements (times ``t``, offsets ``y``, engine
        residuals ``r``: measured offset − the engine's prediction served before it)."""
        import torch

        relative = self.input == ENGINE_RESIDUAL
        if relative:
            p = prepare(t[-self.context:], r[-self.context:]) if r is not None else None
        else:
            p = prepare_line(t[-self.context:], y[-self.context:])
        if p is None:
            return None
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = self.pipeline.predict(torch.from_numpy(p.context_us)[None, :],
                                         prediction_length=self.steps)
        self.timings_ms.append((time.perf_counter() - t0) * 1e3)
        q = pred[0].numpy().astype(float) / US  # (quantiles, steps)
        lo, mid, hi = (q[i] for i in self._iq)
        if not np.all(np.isfinite(mid)):
            return None
        spread = np.maximum((hi - lo) / Z80, 0.0)
        self.last_refresh = now if now is not None else p.t_last
        return Forecast(self.name, p.t_last, max(p.dt, 1e-3), p.icpt, p.slope,
                        tuple(float(v) for v in mid), tuple(float(v) for v in spread),
                        self.last_refresh, len(p.context_us), relative)

    def latency(self) -> dict[str, float | None]:
        if not self.timings_ms:
            return {"p50_ms": None, "p99_ms": None}
        a = np.asarray(self.timings_ms)
        return {"p50_ms": round(float(np.percentile(a, 50)), 3),
                "p99_ms": round(float(np.percentile(a, 99)), 3)}


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)
