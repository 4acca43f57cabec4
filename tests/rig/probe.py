"""Run under the shim by tests/test_rig.py: reports fake and real clocks, waits, adjtimex.

Real clocks come from the raw system call (libc's ``syscall``, which the shim does not
interpose), so each line pairs a shimmed reading with the real one taken right after it.
Commands on argv: ``clocks N``, ``wait S``, ``set``, ``timex``.
"""

import ctypes
import json
import sys
import threading
import time

SYS_clock_gettime = 228  # x86_64
libc = ctypes.CDLL(None, use_errno=True)


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def real(clk: int) -> int:
    ts = Timespec()
    libc.syscall(SYS_clock_gettime, clk, ctypes.byref(ts))
    return ts.sec * 1_000_000_000 + ts.nsec


CLOCKS = {"REALTIME": 0, "MONOTONIC": 1, "MONOTONIC_RAW": 4, "REALTIME_COARSE": 5,
          "MONOTONIC_COARSE": 6, "BOOTTIME": 7, "TAI": 11}


def clocks(n: int) -> None:
    out = []
    for _ in range(n):
        row = {}
        for name, clk in CLOCKS.items():
            before = real(clk)
            fake = time.clock_gettime_ns(clk)
            row[name] = (before, fake, real(clk))
        row["REALTIME_AT"] = real(0)
        row["RAW_AT"] = real(4)
        row["time_ns"] = (real(0), time.time_ns(), real(0))
        out.append(row)
    print(json.dumps(out))


def mono_cond_wait(seconds: float) -> None:
    """pthread_cond_timedwait on a CLOCK_MONOTONIC condition variable, the wait CPython's GIL
    makes (a deadline from the shimmed MONOTONIC, as ``_PyThread_cond_after`` reads it)."""
    attr, cond, mutex = (ctypes.create_string_buffer(64) for _ in range(3))
    libc.pthread_condattr_init(attr)
    libc.pthread_condattr_setclock(attr, CLOCKS["MONOTONIC"])
    libc.pthread_cond_init(cond, attr)
    libc.pthread_mutex_init(mutex, None)
    libc.pthread_mutex_lock(mutex)
    now = Timespec()
    libc.clock_gettime(CLOCKS["MONOTONIC"], ctypes.byref(now))
    ns = now.sec * 1_000_000_000 + now.nsec + round(seconds * 1e9)
    deadline = Timespec(ns // 1_000_000_000, ns % 1_000_000_000)
    for _ in range(100):  # 0: a spurious wakeup; ETIMEDOUT ends it
        if libc.pthread_cond_timedwait(cond, mutex, ctypes.byref(deadline)) != 0:
            break
    libc.pthread_mutex_unlock(mutex)


def waits(seconds: float) -> None:
    """Wall time (real MONOTONIC) taken by each kind of timed wait CPython makes."""
    lock = threading.Lock()
    lock.acquire()
    cond = threading.Condition()

    def cond_wait() -> None:
        with cond:
            cond.wait(seconds)

    res = {}
    for name, fn in (("sleep", lambda: time.sleep(seconds)),
                     ("event", lambda: threading.Event().wait(seconds)),
                     ("lock", lambda: lock.acquire(timeout=seconds)),
                     ("condition", cond_wait),
                     ("monotonic_condvar", lambda: mono_cond_wait(seconds))):
        t = real(1)
        fn()
        res[name] = (real(1) - t) / 1e9
    print(json.dumps(res))


class Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("constant", ctypes.c_long),
                ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


def timex() -> None:
    res = {}
    for fn in ("adjtimex", "__adjtimex", "ntp_adjtime"):
        tx = Timex()
        rc = getattr(libc, fn)(ctypes.byref(tx))
        res[fn] = [rc, tx.maxerror, tx.esterror, tx.status, tx.offset, tx.freq, tx.tai]
    tx = Timex()
    res["clock_adjtime"] = [libc.clock_adjtime(0, ctypes.byref(tx)), tx.maxerror, tx.status]
    print(json.dumps(res))


def try_set() -> None:
    """Every way of setting the clock, each asked to change nothing harmful if it did pass:
    the value written is the current time / a zero adjustment. Reports (rc, errno)."""
    res = {}
    tx = Timex()
    tx.modes = 0x4000  # ADJ_TICK with the current tick: harmless if it passed
    tx.tick = 10000
    res["adjtimex"] = (libc.adjtimex(ctypes.byref(tx)), ctypes.get_errno())
    res["ntp_adjtime"] = (libc.ntp_adjtime(ctypes.byref(tx)), ctypes.get_errno())
    res["clock_adjtime"] = (libc.clock_adjtime(0, ctypes.byref(tx)), ctypes.get_errno())
    ts = Timespec()
    libc.clock_gettime(0, ctypes.byref(ts))
    res["clock_settime"] = (libc.clock_settime(0, ctypes.byref(ts)), ctypes.get_errno())
    tv = (ctypes.c_long * 2)(ts.sec, ts.nsec // 1000)
    res["settimeofday"] = (libc.settimeofday(ctypes.byref(tv), None), ctypes.get_errno())
    zero = (ctypes.c_long * 2)(0, 0)
    res["adjtime"] = (libc.adjtime(ctypes.byref(zero), None), ctypes.get_errno())
    try:
        time.clock_settime_ns(time.CLOCK_REALTIME, time.clock_gettime_ns(time.CLOCK_REALTIME))
        res["time.clock_settime_ns"] = (0, 0)
    except OSError as exc:
        res["time.clock_settime_ns"] = (-1, exc.errno)
    print(json.dumps(res))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "clocks":
        clocks(int(sys.argv[2]))
    elif cmd == "wait":
        waits(float(sys.argv[2]))
    elif cmd == "timex":
        timex()
    elif cmd == "set":
        try_set()
