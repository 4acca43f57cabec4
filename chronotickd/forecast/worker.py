"""The daemon's inference worker and the query-path wrapper that applies its forecasts.

The worker thread reads the engine's published ``ClockState`` (its ``history`` holds the
selected source's *measurements*, never forecasts), scores the previous forecasts against
each new measurement, re-runs a model when its refresh period has passed *and* its context
changed, and swaps in a new immutable ``FusionState``. The engine thread wraps each state it
publishes in ``FusedClock`` with the latest ``FusionState``; a query is then the engine's
arithmetic plus a weighted sum of a few numbers, never a wait for the model.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

from chronotickd.core.measurement import Status
from chronotickd.core.state import ClockState, TimeAnswer
from chronotickd.core.timebase import REAL_FLOAT_SLACK_S, ClockReading, as_reading
from chronotickd.forecast.core import ForecastCore, ModelSpec
from chronotickd.forecast.fusion import ENGINE, FusionState, fuse

log = logging.getLogger("chronotickd.forecast")


class FusedClock:
    """Drop-in for ``ClockState`` on the query path: the engine's answer, fused.

    Every answering method of ``ClockState`` is implemented here (``answer``, ``answer_ns``,
    ``answer_delta``, ``query``, ``future``, ``at``): the handlers call them on whatever is
    published, so a missing one would silently serve the plain engine (issue 12 item 7).
    Forecasts are of θ on the engine's raw axis; the fusion happens there and δ is applied
    after, exactly as the engine's own answer does.
    """

    __slots__ = ("active", "base", "fusion")

    def __init__(self, base: ClockState, fusion: FusionState) -> None:
        self.base = base
        self.fusion = fusion
        self.active = any(fusion.weights.get(n, 0.0) > 0.0 for n in fusion.forecasts)

    def answer_delta(self, raw: float, delta: float, width: float = 0.0
                     ) -> tuple[float, float, Status, str, float, float]:
        a = self.base.answer_delta(raw, delta, width)
        if not self.active or a[2] is not Status.SYNCHRONIZED:
            return a
        theta, bound = fuse(self.fusion, a[0] + delta, a[1], raw)
        return theta - delta, bound, a[2], a[3], a[4], a[5]

    def answer_ns(self, raw_ns: int, real_ns: int, width_ns: int = 0
                  ) -> tuple[float, float, Status, str, float, float]:
        return self.answer_delta(raw_ns * 1e-9,
                                 (real_ns - raw_ns - self.base.epoch_ns) * 1e-9, width_ns * 1e-9)

    def answer(self, raw: float, real: float, width: float = 0.0
               ) -> tuple[float, float, Status, str, float, float]:
        off, bound, status, source, as_of, void = self.answer_delta(
            raw, (real - self.base.epoch) - raw, width)
        if status is not Status.UNSYNCHRONIZED:
            bound += REAL_FLOAT_SLACK_S
        return off, bound, status, source, as_of, void

    def query(self, now: ClockReading | float) -> TimeAnswer:
        r = as_reading(now, self.base.epoch)
        return TimeAnswer(r.real, *self.answer(r.raw, r.real, r.width))

    def future(self, now: ClockReading | float, seconds_ahead: float) -> TimeAnswer:
        r = as_reading(now, self.base.epoch)
        ahead = max(0.0, seconds_ahead)
        return TimeAnswer(r.real + ahead, *self.answer(r.raw + ahead, r.real + ahead, r.width))

    def at(self, system_time: float, now: ClockReading | float | None = None,
           cached_only: bool = False) -> TimeAnswer:
        """Retrospective: the engine's two-sided fit (measurements after the instant
        included) is better than any forecast of it, so ``at`` is the engine's."""
        return self.base.at(system_time, now, cached_only)

    def __getattr__(self, name: str) -> Any:  # fit, source, tracks, history, epoch, ...
        return getattr(self.base, name)


def unwrap(clock: Any) -> ClockState:
    return clock.base if isinstance(clock, FusedClock) else clock


class ForecastWorker:
    """Loads the model in its own thread and keeps ``state`` (a ``FusionState``) fresh."""

    def __init__(self, source: str, threads: int, cpu_affinity: str, specs: list[ModelSpec],
                 get_clock: Any) -> None:
        self.source = source
        self.threads = threads
        self.cpus = {int(c) for c in cpu_affinity.replace(" ", "").split(",") if c}
        self.specs = specs
        self.get_clock = get_clock
        self.state = FusionState()
        self.core: ForecastCore | None = None
        self.reason: str | None = "loading"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forecast", daemon=True)
        self._logged_failures: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wrap(self, clock: ClockState) -> Any:
        state = self.state
        active = any(state.weights.get(n, 0.0) > 0.0 for n in state.forecasts)
        return FusedClock(clock, state) if active else clock

    def _load(self) -> ForecastCore | None:
        from chronotickd.forecast.loader import ForecastUnavailable, load_pipeline

        if self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)  # 0 = this thread on Linux
            except (OSError, ValueError) as exc:
                hint = ""
                if isinstance(exc, PermissionError) and os.environ.get("INVOCATION_ID"):
                    hint = ("; the unit's SystemCallFilter=~@resources blocks it: add a drop-in "
                            "with SystemCallFilter=sched_setaffinity (docs/service.md)")
                log.warning("model.cpu_affinity %s not applied (%s); running unpinned%s",
                            sorted(self.cpus), exc, hint)
        try:
            pipe = load_pipeline(self.source, self.threads)
            from chronotickd.forecast.forecaster import Forecaster
        except ForecastUnavailable as exc:
            self.reason = str(exc)
            log.warning("forecaster off, serving the classical engine: %s", exc)
            return None
        except Exception as exc:  # never let the model take the daemon down
            self.reason = f"{type(exc).__name__}: {exc}"
            log.warning("forecaster off, serving the classical engine: %s", self.reason)
            return None
        self.reason = None
        log.info("forecaster loaded from %s (%s)", self.source,
                 ", ".join(f"{s.name}: context {s.context}, refresh {s.refresh_s:g} s"
                           for s in self.specs))
        return ForecastCore([Forecaster(s.name, pipe, s.context, s.horizon_s, s.refresh_s)
                             for s in self.specs])

    def _run(self) -> None:
        core = self._load()
        if core is None:
            return
        self.core = core
        seen = -math.inf
        prev: ClockState | None = None
        due = {s.name: 0.0 for s in self.specs}
        while not self._stop.is_set():
            base = unwrap(self.get_clock())
            hist = base.history
            first = len(hist)
            while first > 0 and hist[first - 1].t > seen:  # new measurements only
                first -= 1
            for m in hist[first:]:
                eng = None
                if prev is not None:
                    a = prev.query(m.t)
                    eng = a.offset if a.status != Status.UNSYNCHRONIZED else None
                core.observe(m, eng)
                seen = m.t
            prev = base
            now = time.time()
            for s in self.specs:
                if now >= due[s.name]:
                    core.refresh(s.name, now)
                    due[s.name] = now + s.refresh_s
                    err = core.errors.get(s.name)
                    if err and s.name not in self._logged_failures:
                        self._logged_failures.add(s.name)
                        log.warning("%s model inference failed (%s); its weight is 0 until it "
                                    "succeeds", s.name, err)
            self.state = core.state
            wait = min(due.values()) - time.time()
            self._stop.wait(min(max(wait, 0.05), 1.0))

    def describe(self) -> dict[str, Any]:
        """``status.models``: per model loaded, source, latency, last refresh, weight, spread."""
        core, state = self.core, self.state
        out: dict[str, Any] = {}
        for s in self.specs:
            row: dict[str, Any] = {"loaded": core is not None, "source": self.source,
                                   "context": s.context, "horizon_s": s.horizon_s,
                                   "refresh_s": s.refresh_s}
            if core is None:
                row["reason"] = self.reason
            else:
                f = core.forecasters[s.name]
                lat = f.latency()
                row.update(inference_p50_ms=lat["p50_ms"], inference_p99_ms=lat["p99_ms"],
                           last_refresh_ns=round(f.last_refresh * 1e9)
                           if f.last_refresh else None,
                           weight=round(float(state.weights.get(s.name, 0.0)), 4),
                           spread_ns=round(state.spread[s.name] * 1e9)
                           if s.name in state.spread else None,
                           active=s.name in state.forecasts,
                           error=core.errors.get(s.name))
            out[s.name] = row
        out[ENGINE] = {"weight": round(float(state.weights.get(ENGINE, 1.0)), 4),
                       "spread_ns": round(state.spread[ENGINE] * 1e9)
                       if ENGINE in state.spread else None,
                       "bound_excess_ns": round(state.excess * 1e9), "scored": state.scored}
        return out


def from_config(cfg: Any, get_clock: Any) -> ForecastWorker | None:
    """The worker the config asks for, or None when ``model.enabled`` is false."""
    if not cfg["model.enabled"]:
        return None
    specs = [ModelSpec(n, cfg[f"model.{n}.context"], cfg[f"model.{n}.horizon_s"],
                       cfg[f"model.{n}.refresh_s"]) for n in ("short", "long")]
    return ForecastWorker(cfg["model.source"], cfg["model.threads"], cfg["model.cpu_affinity"],
                          specs, get_clock)
