"""Forecaster: real inference with the shipped model, fusion arithmetic, calibration,
fallback without the extra, and the no-feedback guarantee."""

from __future__ import annotations

import builtins
import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("torch", reason="the chronos extra is not installed")
pytest.importorskip("chronos", reason="the chronos extra is not installed")

from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement
from chronotickd.forecast import loader
from chronotickd.forecast.core import LONG, SHORT, ForecastCore
from chronotickd.forecast.forecaster import Forecast, Forecaster
from chronotickd.forecast.fusion import (
    ENGINE,
    Calibration,
    FusionState,
    fuse,
    min_variance_weights,
)
from chronotickd.forecast.residual import ENGINE_RESIDUAL, LINE, prepare, prepare_line
from chronotickd.forecast.worker import ForecastWorker, FusedClock

ENGRES = loader.SHIPPED.parent / "chronotick-bolt-mini-engres"


@pytest.fixture(scope="module")
def pipe():
    return loader.load_pipeline(None, threads=1)


@pytest.fixture(scope="module")
def engres_pipe():
    return loader.load_pipeline(str(ENGRES), threads=1)


def engine_residuals(ms: list[Measurement]) -> np.ndarray:
    """measured − the engine's prediction from its state before each measurement."""
    engine = Engine()
    state = engine.snapshot(0.0)
    r = np.full(len(ms), np.nan)
    for i, m in enumerate(ms):
        if i:
            r[i] = m.offset - state.query(m.t).offset
        engine.add(m)
        state = engine.snapshot(m.t)
    return r


def series(n: int, seed: int = 1, dt: float = 16.0) -> list[Measurement]:
    rng = np.random.default_rng(seed)
    t = 1.7e9 + np.arange(n) * dt
    truth = 1e-3 + 5e-6 * (t - t[0]) + 50e-6 * np.sin((t - t[0]) / 1800.0)
    off = truth + rng.normal(0, 30e-6, n)
    return [Measurement.from_ntp(float(a), float(b), 400e-6) for a, b in zip(t, off,
                                                                               strict=True)]


def test_shipped_model_is_small_and_loads(pipe) -> None:
    weights = loader.SHIPPED / "model.safetensors"
    assert weights.stat().st_size <= 5_000_000
    cfg = json.loads((loader.SHIPPED / "config.json").read_text())
    assert cfg["chronos_pipeline_class"] == "ChronosBoltPipeline"
    assert pipe.model_prediction_length == 16


def test_forecast_shapes(pipe) -> None:
    ms = series(120)
    t = np.array([m.t for m in ms])
    y = np.array([m.offset for m in ms])
    for spec in (SHORT, LONG):
        f = Forecaster(spec.name, pipe, spec.context, spec.horizon_s, spec.refresh_s)
        fc = f.predict(t, y)
        assert fc is not None
        assert len(fc.median) == len(fc.spread) == 16
        assert all(math.isfinite(v) for v in fc.median)
        assert all(s >= 0 for s in fc.spread)
        assert fc.context_len == min(spec.context, 120)
        # one step ahead the forecast is near the line through the data (≤ 1 ms here)
        assert abs(fc.offset(t[-1] + 16.0, 0.0) - y[-1]) < 1e-3
        assert f.latency()["p50_ms"] is not None
    import torch

    q, mean = pipe.predict_quantiles(torch.zeros(2, 100), prediction_length=16)
    assert tuple(q.shape) == (2, 16, 9) and tuple(mean.shape) == (2, 16)


def test_engine_residual_model(pipe, engres_pipe) -> None:
    """The engine-residual model (docs/forecasting.md) says so in chronotick.json and its
    forecast is a correction added to the engine's answer."""
    assert pipe.chronotick_input == LINE  # the shipped model: no marker
    assert engres_pipe.chronotick_input == ENGINE_RESIDUAL
    ms = series(120)
    t = np.array([m.t for m in ms])
    y = np.array([m.offset for m in ms])
    r = engine_residuals(ms)
    f = Forecaster("short", engres_pipe, 100, 5.0, 1.0)
    assert f.predict(t, y) is None  # no engine residuals, no forecast
    fc = f.predict(t, y, r=r)
    assert fc is not None and fc.relative and fc.context_len == 100
    # residuals of ~30 µs noise: the correction is small (≤ 200 µs here)
    assert abs(fc.residual(t[-1] + 16.0)) < 2e-4
    assert fc.offset(t[-1] + 16.0, 1e-3) == pytest.approx(1e-3 + fc.residual(t[-1] + 16.0))


def test_too_short_or_gappy_context_gives_no_forecast(pipe) -> None:
    f = Forecaster("short", pipe, 100, 5.0, 1.0)
    assert f.predict(np.arange(10.0), np.zeros(10)) is None
    t = np.concatenate([np.arange(50.0), 10_000 + np.arange(5.0)])  # outage 5 samples ago
    assert f.predict(t, np.zeros(55)) is None


def fake(name: str, level: float) -> Forecast:
    return Forecast(name, 0.0, 1.0, level, 0.0, (0.0,) * 16, (1e-6,) * 16, 0.0, 100)


def test_fusion_arithmetic() -> None:
    state = FusionState({"short": fake("short", 2e-3), "long": fake("long", 4e-3)},
                        {ENGINE: 0.5, "short": 0.25, "long": 0.25}, {}, excess=1e-4)
    off, bound = fuse(state, 0.0, 1e-3, 5.0)
    assert off == pytest.approx(1.5e-3)
    assert bound == pytest.approx(1e-3 + 1.5e-3 + 1e-4)  # never narrower than the engine's
    rel = Forecast("short", 0.0, 1.0, 0.0, 0.0, (2e-4,) * 16, (1e-6,) * 16, 0.0, 100, True)
    off, bound = fuse(FusionState({"short": rel}, {ENGINE: 0.5, "short": 0.5}), 1e-3, 1e-3, 5.0)
    assert off == pytest.approx(1.1e-3)  # a correction: half of it on the engine's answer
    assert bound == pytest.approx(1.1e-3)
    only_engine = FusionState({"short": fake("short", 2e-3)}, {ENGINE: 1.0, "short": 0.0})
    assert fuse(only_engine, 7e-4, 1e-3, 1.0) == (pytest.approx(7e-4), pytest.approx(1e-3))


def test_min_variance_weights() -> None:
    rng = np.random.default_rng(0)
    e = np.column_stack([rng.normal(0, 1, 4000), rng.normal(0, 2, 4000)])
    w = min_variance_weights(e)
    assert w == pytest.approx([0.8, 0.2], abs=0.03)  # inverse variance: 1/1 : 1/4
    # noise shared by all (the measurement's) does not dilute the weights towards 1/2 as
    # plain inverse variances would (1/101 : 1/104); only sampling noise moves them
    common = rng.normal(0, 10, (4000, 1))
    assert min_variance_weights(e + common)[0] == pytest.approx(0.8, abs=0.08)
    bad = np.column_stack([e[:, 0], e[:, 0] * 3])  # a worse copy: weight 0, never negative
    assert min_variance_weights(bad)[1] == pytest.approx(0.0, abs=1e-9)


def test_calibration_widens_and_reweights_after_a_burst() -> None:
    rng = np.random.default_rng(3)
    cal = Calibration(("short",), window=128, min_scored=16)
    fc = {"short": fake("short", 0.0)}
    for _ in range(100):
        truth = 0.0
        cal.score({ENGINE: rng.normal(0, 40e-6), "short": rng.normal(0, 10e-6),
                   "fused": rng.normal(0, 12e-6)}, truth + rng.normal(0, 5e-6))
    calm = cal.state(fc)
    assert calm.weights["short"] > 0.7
    assert calm.excess == 0.0
    for _ in range(40):  # the model goes wrong for a while, and so does the fused answer
        cal.score({ENGINE: rng.normal(0, 40e-6), "short": rng.normal(0, 800e-6),
                   "fused": rng.normal(0, 600e-6)}, rng.normal(0, 5e-6))
    burst = cal.state(fc)
    assert burst.spread["short"] > 5 * calm.spread["short"]
    assert burst.weights["short"] < 0.2 < burst.weights[ENGINE]
    assert burst.excess > 100e-6  # the served bound widens until the weights moved


@pytest.mark.parametrize("which", [LINE, ENGINE_RESIDUAL])
def test_predictions_never_enter_context(which, request) -> None:
    pipe = request.getfixturevalue("pipe" if which == LINE else "engres_pipe")
    seen: list[np.ndarray] = []
    real_predict = pipe.predict

    def spy(ctx, *a, **kw):
        seen.append(ctx.numpy().copy())
        return real_predict(ctx, *a, **kw)

    pipe.predict = spy
    try:
        core = ForecastCore([Forecaster("short", pipe, 100, 5.0, 1.0),
                             Forecaster("long", pipe, 300, 60.0, 30.0)])
        engine = Engine()
        ms = series(140, seed=5)
        want = []  # measured − the engine's prediction before it; nothing a forecast made
        for i, m in enumerate(ms):
            state = engine.snapshot(m.t)
            eng = state.query(m.t).offset if i > 10 else None
            want.append(m.offset - eng if eng is not None else np.nan)
            core.observe(m, eng)
            engine.add(m)
            core.refresh_all(m.t)
            core.refresh_all(m.t + 1.0)  # nothing new: must not run again
        t, y, r = core.context()
        assert list(y) == [m.offset for m in ms]  # only measurements, exactly
        np.testing.assert_array_equal(r, np.array(want))  # ... and the engine's predictions
        assert list(t) == [m.t for m in ms]
        tt = np.array([m.t for m in ms[-100:]])
        if which == LINE:
            assert len(seen) == 2 * (len(ms) - 15)  # one run per model per new measurement
            last = prepare_line(tt, np.array([m.offset for m in ms[-100:]]))
        else:  # from the 16th engine residual on
            assert len(seen) == 2 * (len(ms) - 26)
            last = prepare(tt, np.array(want[-100:]))
        assert last is not None
        np.testing.assert_array_equal(seen[-2][0], last.context_us)
        assert core.calibration.rows  # predictions were scored against later measurements
    finally:
        pipe.predict = real_predict


def test_fallback_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_chronos(name, *a, **kw):
        if name == "chronos" or name.startswith("chronos."):
            raise ImportError("No module named 'chronos'", name="chronos")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_chronos)
    with pytest.raises(loader.ForecastUnavailable, match="pip install"):
        loader.load_pipeline(None)
    engine = Engine()
    for m in series(20):
        engine.add(m)
    base = engine.snapshot(series(20)[-1].t)
    w = ForecastWorker("builtin", 1, "", [SHORT, LONG], lambda: base)
    w.start()
    deadline = time.monotonic() + 10
    while w.reason == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    assert "pip install" in (w.reason or "")
    assert w.wrap(base) is base  # the classical engine serves unchanged
    desc = w.describe()
    assert desc["short"]["loaded"] is False and "chronos" in desc["short"]["reason"]


def test_fused_clock_answers_like_engine_without_forecasts() -> None:
    engine = Engine()
    ms = series(30)
    for m in ms:
        engine.add(m)
    base = engine.snapshot(ms[-1].t)
    fc = FusedClock(base, FusionState())
    t = ms[-1].t + 3
    assert fc.query(t) == base.query(t)
    assert fc.source == base.source and fc.fit is base.fit


def test_daemon_with_models_on(chronyd) -> None:
    """The real daemon against a real chronyd: models load, forecast, and show in status."""
    from support import daemon_process

    from chronotick_client.client import Client

    with daemon_process(ntp={"servers": [chronyd.server], "minpoll_s": 0.3,
                             "burst_interval_s": 0.3, "maxpoll_s": 2, "timeout_s": 0.5},
                        model={"enabled": True, "short": {"refresh_s": 0.5}}) as d:
        deadline = time.monotonic() + 45
        models: dict = {}
        with Client(d.socket) as c:
            while time.monotonic() < deadline:
                models = c.status().get("models", {})
                if models.get("short", {}).get("active"):
                    break
                time.sleep(0.5)
            assert models["short"]["loaded"] is True, (models, d.log())
            assert models["short"]["active"] is True, (models, d.log())
            assert models["short"]["inference_p50_ms"] > 0
            assert models["long"]["loaded"] is True
            assert set(models) == {"short", "long", "engine"}
            now = c.now()
            assert now["status"] == "synchronized"
            assert now["bound_ns"] > 0
        assert "forecaster loaded" in d.log()


def test_daemon_model_source_missing_falls_back(chronyd, tmp_path) -> None:
    from support import daemon_process

    from chronotick_client.client import Client

    missing = str(tmp_path / "no-such-model")
    with daemon_process(ntp={"servers": [chronyd.server], "minpoll_s": 0.3,
                             "timeout_s": 0.5},
                        model={"enabled": True, "source": missing}) as d:
        deadline = time.monotonic() + 30
        with Client(d.socket) as c:
            while time.monotonic() < deadline:
                row = c.status().get("models", {}).get("short", {"reason": "loading"})
                if row.get("reason") != "loading":
                    break
                time.sleep(0.2)
            assert row["loaded"] is False and "cannot load model" in row["reason"]
            assert c.now()["bound_ns"] > 0  # still serving: the classical engine
        assert d.log().count("forecaster off, serving the classical engine") == 1
