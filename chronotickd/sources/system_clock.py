"""The last-resort source: the system clock itself, with the error the kernel admits to.

``adjtimex(2)`` reports ``maxerror`` (µs) and the STA_UNSYNC flag. When another NTP daemon
disciplines the clock, ``maxerror`` is its promise; when nobody does, the kernel says 16 s.
That is what an ``unsynchronized`` answer carries as its bound: wide, but not invented.

The kernel's figure is believed only when it is both *claimed* and *plausible*: STA_UNSYNC
clear (someone says the clock is disciplined) and ``0 < maxerror < 16 s``. systemd-timesyncd,
for one, clears STA_UNSYNC but leaves maxerror at 0 — taken at face value that would be a
1 µs promise nobody made. Anything else gets the documented unsynchronized default, 16 s (the
kernel's NTP_PHASE_LIMIT, which chrony reports too).

adjtimex is reached through ``ctypes.CDLL(None)``: the symbols the process itself resolves.
That is the C library unless something was preloaded in front of it, which is how the test
rig (tests/rig) shows the daemon a kernel of its choosing; ``CDLL(find_library('c'))`` would
bypass such a preload. In production the two are the same function.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S

STA_INS = 0x0010  # the kernel will insert a leap second at the end of the UTC day
STA_DEL = 0x0020  # ... delete one
STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    """The process's own symbol table (see the module docstring for why not libc by name)."""
    return ctypes.CDLL(None, use_errno=True)


def honest_maxerror(maxerror_us: int, status: int) -> tuple[float, bool]:
    """(bound in seconds, kernel claims synchronized) from raw adjtimex fields.

    Pure, so the rule is tested without a kernel: the claim counts only with STA_UNSYNC clear
    and a maxerror strictly between 0 and the 16 s unsynchronized limit.
    """
    synced = not (status & STA_UNSYNC)
    seconds = maxerror_us / 1e6
    if synced and 0.0 < seconds < KERNEL_UNSYNC_MAXERROR_S:
        return seconds, True
    return KERNEL_UNSYNC_MAXERROR_S, False


def _read_timex() -> _Timex | None:
    """The kernel's NTP state (adjtimex with modes = 0: read-only, changes nothing)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        tx = _Timex()
        tx.modes = 0
        if _libc().adjtimex(ctypes.byref(tx)) < 0:
            return None
    except (OSError, AttributeError):
        return None
    return tx


def kernel_rate() -> tuple[float, bool, int]:
    """How CLOCK_REALTIME runs against CLOCK_MONOTONIC_RAW, as the kernel is told to run it.

    Returns ``(rate, slewing, leap)``: ``rate`` = d(REALTIME − RAW)/d(RAW) from the frequency
    and tick adjustments (0.0 when unknown), ``slewing`` whether an offset is still being slewed
    in on top of that (up to 500 ppm more), ``leap`` 1 when a leap second will be inserted at
    the end of the UTC day, 2 when one will be deleted, else 0.
    """
    tx = _read_timex()
    if tx is None:
        return 0.0, False, 0
    usec_per_tick = 1_000_000 // (os.sysconf("SC_CLK_TCK") or 100)  # tick is µs per USER_HZ
    rate = tx.freq / 65536e6 + (tx.tick - usec_per_tick) / usec_per_tick
    leap = 1 if tx.status & STA_INS else 2 if tx.status & STA_DEL else 0
    return rate, tx.offset != 0, leap


def kernel_maxerror() -> tuple[float, bool]:
    """(bound in seconds, believed synchronized). Read-only: modes = 0 changes nothing."""
    tx = _read_timex()
    if tx is None:
        return KERNEL_UNSYNC_MAXERROR_S, False
    return honest_maxerror(tx.maxerror, tx.status)
