"""Conversion of core answers (float seconds) into wire results (integer nanoseconds).

The system time stays the exact integer the kernel gave; the offset is rounded to the
nearest ns and the bound is rounded *up*, so integer arithmetic never narrows the promise.
"""

from __future__ import annotations

import math
from math import ceil
from typing import Any

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
    offset_ns = round(offset * 1e9)
    bound_ns = ceil(bound * 1e9) if bound < _FINITE_LIMIT else 2**62
    corrected = system_time_ns + offset_ns
    as_of_ns = round(as_of * 1e9) if as_of else 0
    return {
        "corrected_time_ns": corrected,
        "system_time_ns": system_time_ns,
        "offset_ns": offset_ns,
        "bound_ns": bound_ns,
        "earliest_ns": corrected - bound_ns,
        "latest_ns": corrected + bound_ns,
        "status": str(status),
        "source": source,
        "as_of_ns": as_of_ns,
        "age_ns": max(0, system_time_ns - as_of_ns) if as_of_ns else None,
        "void_after_ns": round(void_after * 1e9) if void_after else 0,
    }
