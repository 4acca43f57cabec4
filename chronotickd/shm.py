"""Shared-memory publication of the clock state: ChronoTick's own segment and ClockBound's.

The publish side of the shared-memory read path (the daemon only wires it to the
``Publisher``). Every published state is also written to

* ChronoTick's segment (``shm.path``, layout v3 in docs/protocol.md, read by
  ``chronotick_client.shm`` and ``clients/c/chronotick_shm.h``): the engine's fit on the
  CLOCK_MONOTONIC_RAW axis (chronotickd/core/timebase.py) with everything a reader needs to
  compute the corrected time and its bound from its own clock reads, the same arithmetic as
  ``ClockState.answer_ns``: θ(raw) at as_of and its slope, their variances, the bound's
  growth, status timing, the REALTIME↔RAW relation at the write (epoch and δ, so a reader can
  tell a step or a suspend since), the pending leap second and the boot;
* optionally a ClockBound v2 segment (``shm.clockbound_path``, e.g.
  ``/var/run/clockbound/shm0``) so ClockBound's unchanged clients (Rust, C, Go) read
  ``CLOCK_REALTIME ± bound``. Those apply no correction, so the bound written covers
  ``|offset| + half-width``, and ``max_drift`` covers how fast that can grow (the system
  clock's own frequency error included) until the next write.

Writes happen in the engine thread right after ``Publisher.publish`` (at least once a second);
they take a few microseconds and never touch the query path. A failing segment logs one line
and is dropped: the socket keeps serving.

``segment_params`` is the single place that knows how a ``ClockState`` maps onto the segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from chronotick_client import shm as layout
from chronotick_client.shm import Params, compute
from chronotickd import statefile
from chronotickd.core.leap import SMEAR_S, correction
from chronotickd.sources import clocks
from chronotickd.sources.system_clock import kernel_rate

log = logging.getLogger("chronotickd.shm")

WRITE_INTERVAL_NS = 1_000_000_000  # the daemon publishes at least this often
KERNEL_SLEW_RATE = 500e-6  # most the kernel slews an adjtime/PLL offset in on top of freq
DRIFT_MARGIN = 1e-6  # rounding, MONOTONIC vs RAW rates, coarse-clock granularity
# ClockBound's bound also covers a daemon answer whose (real, raw, real) read was a little
# wider than the writer's best of three (the daemon's own uncertainty of δ)
CB_READ_MARGIN_NS = 1_000

# ClockBound protocol v2 (clock-bound 2.x docs/PROTOCOL.md; ../shared/REFERENCE.md §6)
CB_MAGIC = (0x414D5A4E, 0x43420200)
CB_SIZE = 80
CB_VERSION = 2
CB_HEADER = struct.Struct("=IIIHH")
CB_GEN_OFFSET = 14
CB_GEN = struct.Struct("H")  # native: one 16-bit store (standard "=H" writes byte by byte)
CB_BODY = struct.Struct("=qqqqqQIiB7x")  # as_of, void_after, bound, disruption, drift, ...
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)  # Linux's id; not in `time`
CB_UNKNOWN, CB_SYNCHRONIZED, CB_FREERUNNING = 0, 1, 2
CB_STATUS = {layout.SYNCHRONIZED: CB_SYNCHRONIZED, layout.FREERUNNING: CB_FREERUNNING}


@dataclass(frozen=True, slots=True)
class WriteReading:
    """The clocks at a write (ns): REALTIME (midpoint of two reads around RAW), RAW, the
    REALTIME spread, and MONOTONIC_COARSE (ClockBound's time axis)."""

    real_ns: int
    raw_ns: int
    width_ns: int
    coarse_ns: int


def read_clocks() -> WriteReading:
    """The tightest of three (real, raw, real) reads: a preemption stays out of δ."""
    raw, real, width = min((clocks.read_ns() for _ in range(3)), key=lambda r: r[2])
    return WriteReading(real, raw, width, time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE))


def _leaps(leaps: tuple, raw_w: float) -> tuple[float, float, Any, bool]:
    """Split the state's leaps at the write: those whose correction no longer changes for any
    raw ≥ ``raw_w`` fold into constants (shift, extra bound); at most one other is carried in
    the segment's leap slot. Returns (shift, extra, the pending leap or None, fits)."""
    shift = extra = 0.0
    pending = []
    for lp in leaps:
        settled = raw_w >= lp.raw and (not lp.smear_doubt or raw_w >= lp.raw + SMEAR_S / 2)
        if settled:
            s, e = correction((lp,), raw_w)
            shift += s
            extra += e
        else:
            pending.append(lp)
    return shift, extra, (pending[0] if pending else None), len(pending) <= 1


def segment_params(clock: Any, reading: WriteReading, boot: bytes,
                   interval_ns: int = WRITE_INTERVAL_NS) -> Params:
    """The adapter: a published state + the clocks at the write → the segment's fields.

    The fit already lives on CLOCK_MONOTONIC_RAW (seconds; ``θ = reference − (raw + epoch)``)
    and is copied to ns. A ``FusedClock`` (forecaster on) is written as its engine state: the
    segment serves the classical engine's answer, which carries its own honest bound. Settled
    leap seconds fold into ``offset_ref``/``systematic``; one pending leap goes in the leap
    slot; a state with more than one pending leap sets FLAG_SOCKET (readers ask the socket).
    """
    base = getattr(clock, "base", clock)
    fit = base.fit
    epoch_ns = int(base.epoch_ns)
    raw_w = reading.raw_ns
    common = dict(epoch_ns=epoch_ns, write_raw_ns=raw_w,
                  write_delta_ns=reading.real_ns - raw_w - epoch_ns,
                  write_interval_ns=interval_ns, confidence_k=float(base.confidence_k),
                  max_drift=float(base.max_drift), unsync_bound=float(base.unsync_bound),
                  boot_id=boot)
    if fit is None:
        return Params(t_ref_ns=raw_w, t_last_ns=0, stale_after_ns=0, void_after_ns=0,
                      offset_ref=0.0, freq=0.0, var_offset=0.0, var_freq=0.0, systematic=0.0,
                      leap_raw_ns=0, state=layout.STATE_NONE, leap=layout.LEAP_NONE,
                      leap_flags=0, flags=0, source="system", **common)
    vo = fit.var_offset if fit.serve_var_offset is None else fit.serve_var_offset
    vf = fit.var_freq if fit.serve_var_freq is None else fit.serve_var_freq
    shift, extra, pending, fits = _leaps(tuple(getattr(base, "leaps", ())), raw_w * 1e-9)
    leap = leap_flags = leap_raw_ns = 0
    if pending is not None:
        leap = layout.LEAP_INSERT if pending.seconds > 0 else layout.LEAP_DELETE
        leap_raw_ns = round(pending.raw * 1e9)
        leap_flags = ((layout.LEAP_CONFIRMED if pending.confirmed else 0)
                      | (layout.LEAP_SMEAR_DOUBT if pending.smear_doubt else 0))
    t_last_ns = round(fit.t_last * 1e9)
    return Params(
        t_ref_ns=round(fit.t_ref * 1e9), t_last_ns=t_last_ns,
        stale_after_ns=t_last_ns + round(base.stale_after * 1e9),
        void_after_ns=t_last_ns + round(base.void_after_s * 1e9),
        offset_ref=float(fit.offset_ref + shift), freq=float(fit.freq), var_offset=float(vo),
        var_freq=float(vf), systematic=float(fit.systematic + extra), leap_raw_ns=leap_raw_ns,
        state=layout.STATE_RESTORED if base.restored else layout.STATE_TRACKING,
        leap=leap, leap_flags=leap_flags,
        flags=((0 if fits else layout.FLAG_SOCKET)
               | (layout.FLAG_HOLDOVER if base.holdover else 0)),
        source=str(base.source), **common)


def clockbound_fields(p: Params, reading: WriteReading, rate: float, slewing: bool
                      ) -> tuple[int, int, int, int, int]:
    """``(as_of_ns, void_after_ns, bound_ns, max_drift_ppb, status)`` of a ClockBound segment.

    ClockBound readers answer ``REALTIME ± (bound + max_drift · (now − as_of))`` with no
    correction. So ``bound`` = the farther end of our interval from REALTIME at the write
    (|offset| + half-width), and ``max_drift`` ≥ how fast that can grow: REALTIME's frequency
    error against the reference (θ's slope minus REALTIME's rate against RAW, plus an offset
    slew the kernel may still be applying), the fit's frequency uncertainty (k·σ_f bounds the
    slope of k·stddev(t)) and the engine's ``max_drift``. Coarse-clock granularity is added
    to the bound once.
    """
    real = reading.real_ns
    as_of = reading.coarse_ns
    try:
        _c, lo, hi, status, *_ = compute(p, real, reading.raw_ns, reading.width_ns)
    except layout.ShmUnavailable:
        status, lo, hi = layout.UNSYNCHRONIZED, real - 2**62, real + 2**62
    if status == layout.UNSYNCHRONIZED:
        bound = max(real - lo, hi - real)
        return as_of, as_of, min(bound, 2**62), round(KERNEL_SLEW_RATE * 1e9), CB_UNKNOWN
    drift = (abs(p.freq - rate) + p.confidence_k * math.sqrt(p.var_freq) + p.max_drift
             + DRIFT_MARGIN + (KERNEL_SLEW_RATE if slewing else 0.0))
    drift_ppb = min(math.ceil(drift * 1e9), 999_999_999)
    res_ns = time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9
    bound_ns = max(real - lo, hi - real) + math.ceil(drift * res_ns) + CB_READ_MARGIN_NS
    void_after = as_of + max(0, p.void_after_ns - reading.raw_ns)
    return as_of, void_after, bound_ns, drift_ppb, CB_STATUS[status]


class SegmentFile:
    """A fixed-size file mapped read-write, locked against a second writer.

    An existing file with the expected header is reused in place (readers that mapped it
    keep seeing updates across a daemon restart); anything else is replaced by a new file
    (never truncated in place: a reader mapping a shrunk file would get SIGBUS).
    """

    def __init__(self, path: str, size: int, mode: int, header_ok: Any) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR)
            head = os.pread(fd, size, 0)
            if len(head) != size or os.fstat(fd).st_size != size or not header_ok(head):
                os.close(fd)
                fd = -1
                os.unlink(path)
        except FileNotFoundError:
            pass
        if fd < 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
            os.ftruncate(fd, size)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(f"another chronotickd already writes {path}") from None
        os.fchmod(fd, mode)
        self.fd = fd
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)  # releases the lock; the file stays for readers that mapped it


class ChronoTickSegment:
    """ChronoTick's own segment (layout v3); generation u64, odd while writing."""

    def __init__(self, path: str, mode: int) -> None:
        self.file = SegmentFile(path, layout.SEGMENT_SIZE, mode, self._header_ok)
        mm = self.file.mm
        gen = layout.GEN.unpack_from(mm, layout.GEN_OFFSET)[0]
        self.gen = gen + (gen & 1)  # continue where a previous daemon stopped
        layout.HEADER.pack_into(mm, 0, layout.MAGIC, layout.LAYOUT_VERSION, 0,
                                layout.SEGMENT_SIZE, 0, self.gen)

    @staticmethod
    def _header_ok(head: bytes) -> bool:
        magic, version, _, size, _, _ = layout.HEADER.unpack_from(head, 0)
        return (magic, version, size) == (layout.MAGIC, layout.LAYOUT_VERSION,
                                          layout.SEGMENT_SIZE)

    def write(self, p: Params) -> None:
        self.write_payload(layout.pack_payload(p))

    def write_payload(self, payload: bytes) -> None:
        """The seqlock write of a packed payload (``layout.pack_payload``)."""
        mm = self.file.mm
        gen = self.gen
        layout.GEN.pack_into(mm, layout.GEN_OFFSET, gen + 1)
        mm[layout.PAYLOAD_OFFSET:layout.SEGMENT_SIZE] = payload
        layout.GEN.pack_into(mm, layout.GEN_OFFSET, gen + 2)
        self.gen = gen + 2

    def close(self, last: Params | None) -> None:
        if last is not None:  # readers fall back to the socket from now on
            self.write(last._replace(flags=last.flags | layout.FLAG_CLOSED))
        self.file.close()


class ClockBoundSegment:
    """A ClockBound v2 segment (80 bytes); generation u16, odd while writing, wraps to 2."""

    def __init__(self, path: str, mode: int) -> None:
        self.file = SegmentFile(path, CB_SIZE, mode, self._header_ok)
        mm = self.file.mm
        gen = CB_GEN.unpack_from(mm, CB_GEN_OFFSET)[0]
        self.gen = gen + (gen & 1) if gen < 0xFFFE else 0
        CB_HEADER.pack_into(mm, 0, *CB_MAGIC, CB_SIZE, CB_VERSION, self.gen)

    @staticmethod
    def _header_ok(head: bytes) -> bool:
        m0, m1, size, version, _ = CB_HEADER.unpack_from(head, 0)
        return (m0, m1, size, version) == (*CB_MAGIC, CB_SIZE, CB_VERSION)

    def write(self, as_of_ns: int, void_after_ns: int, bound_ns: int, drift_ppb: int,
              status: int) -> None:
        mm = self.file.mm
        gen = self.gen
        nxt = gen + 2 if gen + 2 <= 0xFFFE else 2  # 0 means "never written"
        CB_GEN.pack_into(mm, CB_GEN_OFFSET, gen + 1)
        CB_BODY.pack_into(mm, 16, *divmod(as_of_ns, 1_000_000_000),
                          *divmod(void_after_ns, 1_000_000_000), bound_ns, 0, drift_ppb,
                          status, 0)
        CB_GEN.pack_into(mm, CB_GEN_OFFSET, nxt)
        self.gen = nxt

    def close(self) -> None:
        self.file.close()


class ShmPublisher:
    """The publish hook: writes each new state to the configured segments.

    A seqlock allows one writer only: the engine thread publishes, but the daemon's shutdown
    (another thread) writes the CLOSED flag, so both hold ``_lock``.
    """

    def __init__(self, path: str, clockbound_path: str, mode: int) -> None:
        self._lock = threading.Lock()
        self.boot = boot_bytes()
        self.last: Params | None = None
        self.own: ChronoTickSegment | None = None
        self.cb: ClockBoundSegment | None = None
        if path:
            self.own = self._open(ChronoTickSegment, path, mode, "shm.path")
        if clockbound_path:
            self.cb = self._open(ClockBoundSegment, clockbound_path, mode, "shm.clockbound_path")

    @staticmethod
    def _open(kind: Any, path: str, mode: int, key: str) -> Any:
        try:
            return kind(path, mode)
        except OSError as exc:
            log.warning("shared-memory segment %s not written: %s; fix its directory's "
                        "permissions or set %s (empty: off). The socket serves as usual.",
                        path, exc.strerror or exc, key)
            return None

    def publish(self, published: Any) -> None:
        """Hook for ``Publisher``: never raises (a broken segment is dropped, once logged)."""
        with self._lock:
            self._publish(published)

    def _publish(self, published: Any) -> None:
        if self.own is None and self.cb is None:
            return
        try:
            reading = read_clocks()
            p = segment_params(published.clock, reading, self.boot)
            if self.own is not None:
                self.own.write(p)
            if self.cb is not None:
                rate, slewing, _leap = kernel_rate()
                self.cb.write(*clockbound_fields(p, reading, rate, slewing))
            self.last = p
        except Exception:
            log.exception("writing the shared-memory segments failed; they are no longer "
                          "updated (readers fall back to the socket)")
            with contextlib.suppress(Exception):
                self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        own, cb, self.own, self.cb = self.own, self.cb, None, None
        try:
            if own is not None:
                own.close(self.last)
        finally:
            if cb is not None:
                cb.close()


def boot_bytes() -> bytes:
    """The daemon's boot id (statefile's rule: the kernel's file, else systemd's %b) as the
    segment's 16 bytes; zeros when unknown (readers then skip the boot check)."""
    text = statefile.boot_id()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return bytes(16)
    return raw if len(raw) == 16 else bytes(16)


def segment_mode(socket_mode: str) -> int:
    """Readable by whoever may use the socket; writable by the daemon only."""
    return (int(socket_mode, 8) & 0o444) | 0o200


def from_config(cfg: Any) -> ShmPublisher | None:
    path, cb_path = cfg["shm.path"], cfg["shm.clockbound_path"]
    if not path and not cb_path:
        return None
    return ShmPublisher(path, cb_path, segment_mode(cfg["socket_mode"]))
