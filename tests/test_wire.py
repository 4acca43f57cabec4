"""Core answers → wire results: integer ns, bounds rounded up, and the hand-packed `now` reply
decoding to exactly what the generic path gives."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement, Status
from chronotickd.core.state import TimeAnswer
from chronotickd.core.timebase import ClockReading
from chronotickd.handlers import Handlers
from chronotickd.publish import Publisher
from chronotickd.wire import answer_to_wire, now_reply_frame, ns_up, values_to_wire

NS = 1_795_532_106_709_260_647


def test_bound_rounds_up_and_offset_to_nearest() -> None:
    ans = TimeAnswer(NS / 1e9, 1.4e-9, 1.0001e-6, Status.SYNCHRONIZED, "ntp", NS / 1e9 - 1, 9e9)
    w = answer_to_wire(ans, NS)
    assert w["offset_ns"] == 1 and w["bound_ns"] == 1001
    assert w["corrected_time_ns"] == NS + 1
    # outward: floor(1.4 − 1000.1) = −999 and ceil(1.4 + 1000.1) = 1002; bound_ns covers both
    assert w["earliest_ns"] == NS - 999 and w["latest_ns"] == NS + 1002
    assert w["status"] == "synchronized" and type(w["status"]) is str
    assert w["age_ns"] == NS - round((NS / 1e9 - 1) * 1e9)


def test_never_measured_has_no_age() -> None:
    w = values_to_wire(NS, 0.0, 16.0, Status.UNSYNCHRONIZED, "system", 0.0, 0.0)
    assert w["as_of_ns"] == 0 and w["age_ns"] is None and w["void_after_ns"] == 0
    assert w["bound_ns"] == 16_000_000_000


@pytest.mark.parametrize("seconds", [math.inf, math.nan, 1e300])
def test_absurd_bounds_saturate(seconds: float) -> None:
    assert ns_up(seconds) == 2**62
    assert values_to_wire(NS, 0.0, seconds, Status.FREERUNNING, "x", 1.0, 2.0)["bound_ns"] == 2**62


CASES: list[tuple[Any, ...]] = [
    (7, NS, 2.5e-5, 6.8e-5, Status.SYNCHRONIZED, "ntp", NS / 1e9 - 0.2, NS / 1e9 + 3600),
    (0, NS, 0.0, 16.0, Status.UNSYNCHRONIZED, "system", 0.0, 0.0),
    (-5, NS, -0.3, math.inf, Status.FREERUNNING, "restored", NS / 1e9 - 30, NS / 1e9 + 3600),
    (2**63 - 1, 5, -1e-9, 1e-9, Status.SYNCHRONIZED, "ptp", 1.0, 2.0),
    (2**64 - 1, NS, 1e-3, 2e-3, Status.SYNCHRONIZED, "ptp", NS / 1e9 + 5, NS / 1e9 + 9),
    (-(2**63), NS, 1e-3, math.nan, Status.FREERUNNING, "model:chronos", NS / 1e9, 0.0),
]


@pytest.mark.parametrize("args", CASES)
def test_hand_packed_now_matches_generic(args: tuple[Any, ...]) -> None:
    req_id, *rest = args
    frame = now_reply_frame(req_id, *rest)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    got = msgpack.unpackb(frame[4:])
    want = {"v": 1, "id": req_id, "ok": True, "result": values_to_wire(*rest)}
    assert got == want
    assert list(got) == list(want) and list(got["result"]) == list(want["result"])


EPOCH = 1_795_530_000  # whole seconds: REALTIME − RAW when the "daemon" started
RAW_NS = NS - EPOCH * 10**9  # raw now (δ = 0)


def _handlers(delta_ns: int = 0) -> Handlers:
    """Engine on raw time; the injected clocks read (RAW_NS, NS + delta_ns)."""
    e = Engine(epoch=EPOCH)
    t0 = RAW_NS / 1e9 - 100
    for i in range(20):
        e.add(Measurement(t0 + 5 * i, 1e-4 + 2e-6 * i, 4e-4, 2e-4))
    return Handlers(Publisher(e.snapshot(RAW_NS / 1e9)),
                    read_ns=lambda: (RAW_NS, NS + delta_ns, 0))


@pytest.mark.parametrize("req", [
    {"v": 1, "id": 1, "op": "now"},
    {"v": 1, "id": "s", "op": "now"},
    {"v": 1, "id": True, "op": "now"},
    {"v": 1, "id": [1], "op": "now"},
    {"v": 1, "op": "now"},
    {"v": 2, "id": 1, "op": "now"},
    {"v": 1, "id": 1, "op": "status"},
    {"v": 1, "id": 1, "op": "future", "seconds": 3},
    {"v": 1, "id": 1, "op": "nope"},
])
def test_reply_frame_is_handle_encoded(req: dict[str, Any]) -> None:
    h = _handlers()
    frame = h.reply_frame(req)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == msgpack.unpackb(msgpack.packb(h.handle(req)))


def test_now_handler_is_the_published_state_at_clock_time() -> None:
    h = _handlers()
    r = h.handle({"v": 1, "id": 1, "op": "now"})["result"]
    assert r == values_to_wire(NS, *h.publisher.current.clock.answer_ns(RAW_NS, NS, 0))
    ans = h.publisher.current.clock.query(ClockReading(RAW_NS / 1e9, NS / 1e9))
    assert abs(answer_to_wire(ans, NS)["offset_ns"] - r["offset_ns"]) <= 250  # float real
    assert r["status"] == "synchronized" and r["age_ns"] == pytest.approx(5e9, abs=1e3)


@pytest.mark.parametrize("offset,bound", [
    (0.6e-9, 0.0), (0.5e-9, 0.6e-9), (-0.6e-9, 0.1e-9), (2.5e-9, 0.4e-9), (1e-3, 2e-3),
    (-0.3, 1.7e-9), (1.4e-9, 1.0001e-6), (0.0, 0.0), (123.456789012, 3.3e-9),
])
def test_interval_rounds_outward(offset: float, bound: float) -> None:
    """earliest = floor((system+offset−bound)·1e9), latest = ceil(...): never narrower than
    the float interval, on both the generic and the hand-packed `now` path."""
    w = values_to_wire(NS, offset, bound, Status.SYNCHRONIZED, "ntp", 1.0, 2.0)
    assert w["earliest_ns"] - NS == math.floor((offset - bound) * 1e9)
    assert w["latest_ns"] - NS == math.ceil((offset + bound) * 1e9)
    assert w["earliest_ns"] - NS <= (offset - bound) * 1e9
    assert w["latest_ns"] - NS >= (offset + bound) * 1e9
    c = w["corrected_time_ns"]
    assert c - w["bound_ns"] <= w["earliest_ns"] and w["latest_ns"] <= c + w["bound_ns"]
    assert w["bound_ns"] >= math.ceil(bound * 1e9)
    got = msgpack.unpackb(now_reply_frame(3, NS, offset, bound, Status.SYNCHRONIZED, "ntp",
                                          1.0, 2.0)[4:])
    assert got["result"] == w


def test_now_reads_both_clocks_and_answers_against_realtime() -> None:
    """REALTIME 20 ms ahead of where raw + epoch puts it (someone stepped it): same true
    time, so the served offset is 20 ms less and the corrected time unchanged."""
    plain = _handlers().handle({"v": 1, "id": 1, "op": "now"})["result"]
    stepped = _handlers(20_000_000).handle({"v": 1, "id": 1, "op": "now"})["result"]
    assert stepped["system_time_ns"] == NS + 20_000_000
    assert abs(stepped["offset_ns"] - (plain["offset_ns"] - 20_000_000)) <= 1_000
    assert abs(stepped["corrected_time_ns"] - plain["corrected_time_ns"]) <= 1_000
    assert stepped["bound_ns"] == plain["bound_ns"]
    # the hand-packed frame gives the same
    frame = _handlers(20_000_000).reply_frame({"v": 1, "id": 1, "op": "now"})
    assert msgpack.unpackb(frame[4:])["result"] == stepped
