"""The last-resort source: the system clock itself, with the error the kernel admits to.

``adjtimex(2)`` reports ``maxerror`` (µs) and the STA_UNSYNC flag. When another NTP daemon
disciplines the clock, ``maxerror`` is its promise; when nobody does, the kernel says 16 s.
That is what an ``unsynchronized`` answer carries as its bound: wide, but not invented.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S

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
    """Loaded once: ``find_library`` runs ``ldconfig -p`` in a subprocess on every call."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def kernel_maxerror() -> tuple[float, bool]:
    """(maxerror in seconds, kernel says synchronized). Read-only: modes = 0 changes nothing."""
    if not sys.platform.startswith("linux"):
        return KERNEL_UNSYNC_MAXERROR_S, False
    try:
        libc = _libc()
        tx = _Timex()
        tx.modes = 0
        if libc.adjtimex(ctypes.byref(tx)) < 0:
            return KERNEL_UNSYNC_MAXERROR_S, False
    except (OSError, AttributeError):
        return KERNEL_UNSYNC_MAXERROR_S, False
    synced = not (tx.status & STA_UNSYNC)
    maxerror = tx.maxerror / 1e6 if synced else KERNEL_UNSYNC_MAXERROR_S
    return max(maxerror, 1e-6), synced
