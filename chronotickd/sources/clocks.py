"""Reading the two clocks of the time base (chronotickd/core/timebase.py): REALTIME and RAW.

Reads are ``real, raw, real`` with ``time.clock_gettime_ns`` (vDSO, no syscall): the raw read
lies between the two real reads, so the pair's uncertainty is their spread (``width``). The
integers are kept until δ is formed, so no float cancellation loses nanoseconds.
"""

from __future__ import annotations

import time

from chronotickd.core.timebase import ClockReading

CLOCK_REALTIME = time.CLOCK_REALTIME
CLOCK_MONOTONIC_RAW = time.CLOCK_MONOTONIC_RAW
_gettime_ns = time.clock_gettime_ns


def read_ns() -> tuple[int, int, int]:
    """(raw_ns, real_ns, width_ns): one back-to-back read; ``real_ns`` is the midpoint and
    ``width_ns`` ≥ 0 their spread (+1 ns of read granularity)."""
    a = _gettime_ns(CLOCK_REALTIME)
    raw = _gettime_ns(CLOCK_MONOTONIC_RAW)
    b = _gettime_ns(CLOCK_REALTIME)
    # |b − a|: REALTIME may have stepped back between the two reads
    return raw, (a + b) // 2, (b - a if b >= a else a - b) + 1


def read() -> ClockReading:
    """The best (narrowest) of three back-to-back reads: a preemption between the calls
    widens one read, rarely all three."""
    best = min((read_ns() for _ in range(3)), key=lambda r: r[2])
    raw, real, width = best
    return ClockReading(raw * 1e-9, real * 1e-9, width * 1e-9)


def raw_now() -> float:
    """CLOCK_MONOTONIC_RAW now, seconds."""
    return _gettime_ns(CLOCK_MONOTONIC_RAW) * 1e-9


def start_epoch() -> float:
    """round(REALTIME − RAW) now: the daemon's constant whole-second epoch."""
    raw, real, _w = read_ns()
    return float(round((real - raw) / 1e9))


def rows_on_system_time(rows: tuple[dict, ...], now: ClockReading,
                        epoch: float) -> tuple[dict, ...]:
    """Source rows re-expressed for clients: sources report measurements on the time base
    (``last_offset`` = θ against raw + epoch, ``last_t`` raw seconds); ``sources`` and
    ``tracking`` promise offsets against the system clock and REALTIME times. Converted with
    δ = REALTIME − RAW − epoch now (δ moves only when someone steps or slews REALTIME)."""
    delta = now.real - now.raw - epoch
    out = []
    for row in rows:
        row = dict(row)
        if row.get("last_offset") is not None:
            row["last_offset"] = row["last_offset"] - delta
        if row.get("last_t") is not None:
            row["last_t"] = row["last_t"] + epoch + delta
        out.append(row)
    return tuple(out)
