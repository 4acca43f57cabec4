"""Conversion of core answers (float seconds) into wire results (integer nanoseconds).

The system time stays the exact integer the kernel gave; the offset is rounded to the
nearest ns and the bound is rounded *up*, so integer arithmetic never narrows the promise.
"""

from __future__ import annotations

import math
from typing import Any

from chronotickd.core.state import TimeAnswer


def ns_up(seconds: float) -> int:
    return math.ceil(seconds * 1e9) if math.isfinite(seconds) else 2**62


def answer_to_wire(ans: TimeAnswer, system_time_ns: int) -> dict[str, Any]:
    offset_ns = round(ans.offset * 1e9)
    bound_ns = ns_up(ans.bound)
    corrected = system_time_ns + offset_ns
    as_of_ns = round(ans.as_of * 1e9) if ans.as_of else 0
    return {
        "corrected_time_ns": corrected,
        "system_time_ns": system_time_ns,
        "offset_ns": offset_ns,
        "bound_ns": bound_ns,
        "earliest_ns": corrected - bound_ns,
        "latest_ns": corrected + bound_ns,
        "status": str(ans.status),
        "source": ans.source,
        "as_of_ns": as_of_ns,
        "age_ns": max(0, system_time_ns - as_of_ns) if as_of_ns else None,
        "void_after_ns": round(ans.void_after * 1e9) if ans.void_after else 0,
    }
