"""Conversion of core answers (float seconds) into wire results (integer nanoseconds).

The system time stays the exact integer the kernel gave. The interval rounds *outward*:
``earliest_ns = system + floor((offset − bound)·1e9)`` and ``latest_ns = system +
ceil((offset + bound)·1e9)`` (the system time is added as an integer: a float cannot hold
today's time to the ns). The offset is rounded to the nearest ns and ``bound_ns`` is the
larger distance from the corrected time to either end (at least ``ceil(bound·1e9)``), so
``corrected ± bound_ns`` covers ``[earliest, latest]`` too and integer arithmetic never
narrows the promise.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from chronotick_client.protocol import interval_ns, now_result
from chronotickd.core.measurement import Status
from chronotickd.core.state import TimeAnswer

_FINITE_LIMIT = 2**62 / 1e9  # a bound this wide (or NaN/inf) is sent as 2**62 ns


def ns_up(seconds: float) -> int:
    return math.ceil(seconds * 1e9) if seconds < _FINITE_LIMIT else 2**62


def answer_to_wire(ans: TimeAnswer, system_time_ns: int) -> dict[str, Any]:
    return values_to_wire(system_time_ns, ans.offset, ans.bound, ans.status, ans.source,
                          ans.as_of, ans.void_after)


def values_to_wire(system_time_ns: int, offset: float, bound: float, status: Status,
                   source: str, as_of: float, void_after: float) -> dict[str, Any]:
    """The wire result of a time answer; arguments as ``ClockState.answer`` returns them."""
    return now_result(system_time_ns, offset, bound, str(status), source, as_of, void_after)


# -- the `now` reply, packed by hand -------------------------------------------------------------
# `now` is the hot path: building the result dict and packing it costs more than the arithmetic.
# This writes the whole frame (length prefix included) with one ``struct`` call: every integer as
# int64 (0xd3, a valid if not minimal msgpack encoding), keys and strings pre-packed into a layout
# cached per (status, source, age known); the body length is fixed per layout. tests/test_wire.py
# checks that it decodes to exactly what ``values_to_wire`` + msgpack produce, key order included.
_INT64 = b"\xd3"
_Layout = tuple[struct.Struct, tuple[bytes, ...]]
_layouts: dict[tuple[str, str, bool], _Layout] = {}
_last: list = [None, None, None, None]  # status, source, has_age, layout: the usual case


def _key(name: str) -> bytes:
    return msgpack.packb(name)


def _layout(status: Status, source: str, has_age: bool) -> _Layout:
    key = (str(status), source, has_age)
    layout = _layouts.get(key)
    if layout is None:
        consts = [
            b"\x84" + _key("v") + msgpack.packb(1) + _key("id") + _INT64,
            _key("ok") + b"\xc3" + _key("result") + b"\x8b" + _key("corrected_time_ns") + _INT64,
            _key("system_time_ns") + _INT64,
            _key("offset_ns") + _INT64,
            _key("bound_ns") + _INT64,
            _key("earliest_ns") + _INT64,
            _key("latest_ns") + _INT64,
            _key("status") + msgpack.packb(str(status)) + _key("source") + msgpack.packb(source)
            + _key("as_of_ns") + _INT64,
        ]
        if has_age:
            consts += [_key("age_ns") + _INT64, _key("void_after_ns") + _INT64]
        else:
            consts += [_key("age_ns") + b"\xc0" + _key("void_after_ns") + _INT64]
        body_len = struct.calcsize(">" + "".join(f"{len(c)}sq" for c in consts))
        consts[0] = struct.pack(">I", body_len) + consts[0]
        fmt = ">" + "".join(f"{len(c)}sq" for c in consts)
        layout = _layouts[key] = (struct.Struct(fmt), tuple(consts))
    _last[:] = [status, source, has_age, layout]
    return layout


def now_reply_frame(req_id: int, system_time_ns: int, offset: float, bound: float,
                    status: Status, source: str, as_of: float, void_after: float) -> bytes:
    """The frame (length + body) of ``{"v": 1, "id": req_id, "ok": True, "result":
    values_to_wire(...)}``."""
    if type(req_id) is not int or not -(2**63) <= req_id < 2**63:  # rare: the generic way
        result = values_to_wire(system_time_ns, offset, bound, status, source, as_of, void_after)
        body = msgpack.packb({"v": 1, "id": req_id, "ok": True, "result": result})
        return struct.pack(">I", len(body)) + body
    offset_ns, bound_ns, lo, hi = interval_ns(offset, bound)
    corrected = system_time_ns + offset_ns
    void_ns = round(void_after * 1e9) if void_after else 0
    has_age = bool(as_of)
    last = _last
    if last[0] is status and last[1] is source and last[2] is has_age:
        s, c = last[3]
    else:
        s, c = _layout(status, source, has_age)
    if has_age:
        as_of_ns = round(as_of * 1e9)
        age_ns = system_time_ns - as_of_ns
        return s.pack(c[0], req_id, c[1], corrected, c[2], system_time_ns, c[3], offset_ns,
                      c[4], bound_ns, c[5], system_time_ns + lo, c[6], system_time_ns + hi,
                      c[7], as_of_ns, c[8], age_ns if age_ns > 0 else 0, c[9], void_ns)
    return s.pack(c[0], req_id, c[1], corrected, c[2], system_time_ns, c[3], offset_ns,
                  c[4], bound_ns, c[5], system_time_ns + lo, c[6], system_time_ns + hi,
                  c[7], 0, c[8], void_ns)
