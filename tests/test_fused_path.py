"""With the model enabled, `now`, `future` and `status` are answered through the fusion
(issue 12 item 7): the published ``FusedClock`` must answer every request itself; a method it
lacks would fall through ``__getattr__`` to the plain engine without anyone noticing."""

from __future__ import annotations

import msgpack
import pytest

from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement
from chronotickd.core.timebase import ClockReading
from chronotickd.forecast.forecaster import Forecast
from chronotickd.forecast.fusion import ENGINE, FusionState
from chronotickd.forecast.worker import FusedClock
from chronotickd.handlers import Handlers
from chronotickd.publish import Publisher

EPOCH = 1_795_530_000
RAW_NS = 3_000 * 10**9
REAL_NS = RAW_NS + EPOCH * 10**9 + 7_000_000  # δ = +7 ms (someone stepped REALTIME)
SHIFT = 300e-6  # the forecaster says θ is 300 µs above the engine's line


def fused_handlers(relative: bool = False) -> tuple[Handlers, FusedClock]:
    eng = Engine(epoch=EPOCH)
    for i in range(30):
        eng.add(Measurement(2_900.0 + 3 * i, 1e-4, 4e-4, 2e-4, source="ntp:a"))
    base = eng.snapshot(RAW_NS / 1e9)
    assert base.fit is not None
    t_last = base.fit.t_last
    if relative:  # an engine-residual model: the forecast is a correction to the engine
        fc = Forecast("short", t_last, 1.0, 0.0, 0.0, (SHIFT,) * 64, (1e-6,) * 64, t_last, 30,
                      relative=True)
    else:
        fc = Forecast("short", t_last, 1.0, base.fit.predict(t_last) + SHIFT, base.fit.freq,
                      (0.0,) * 64, (1e-6,) * 64, t_last, 30)
    fusion = FusionState(forecasts={"short": fc}, weights={ENGINE: 0.0, "short": 1.0},
                         spread={}, excess=0.0)
    fused = FusedClock(base, fusion)
    assert fused.active
    return Handlers(Publisher(fused), read_ns=lambda: (RAW_NS, REAL_NS, 0)), fused


@pytest.mark.parametrize("relative", [False, True])
def test_now_goes_through_the_fusion_on_both_paths(relative: bool) -> None:
    h, fused = fused_handlers(relative)
    base = fused.base
    plain = base.answer_ns(RAW_NS, REAL_NS, 0)
    for req in ({"v": 1, "id": 1, "op": "now"}, {"v": 1, "id": "x", "op": "now"}):
        frame = h.reply_frame(req)  # the hand-packed fast path for integer ids
        r = msgpack.unpackb(frame[4:])["result"]
        assert r["offset_ns"] == pytest.approx(round((plain[0] + SHIFT) * 1e9), abs=1_000)
        assert r["offset_ns"] != round(plain[0] * 1e9)
        assert r["bound_ns"] > round(plain[1] * 1e9)  # the fusion adds its disagreement
    r = h.handle({"v": 1, "id": 2, "op": "future", "seconds": 2})["result"]
    ahead = base.answer_ns(RAW_NS + 2 * 10**9, REAL_NS + 2 * 10**9, 0)
    assert r["offset_ns"] == pytest.approx(round((ahead[0] + SHIFT) * 1e9), abs=1_000)


def test_at_is_the_engines_retrospective_fit() -> None:
    """Documented: ``at`` uses measurements on both sides, which beats any forecast."""
    h, fused = fused_handlers()
    sys_ns = REAL_NS - 10 * 10**9
    r = h.handle({"v": 1, "id": 3, "op": "at", "system_time_ns": sys_ns})["result"]
    want = fused.base.at(sys_ns / 1e9, ClockReading(RAW_NS / 1e9, REAL_NS / 1e9))
    assert r["system_time_ns"] == sys_ns
    assert abs(r["offset_ns"] - round(want.offset * 1e9)) < 10_000
