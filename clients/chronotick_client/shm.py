"""Read chronotickd's shared-memory segment: corrected time at about the cost of a clock read.

Standard library only. The daemon rewrites a small segment (default ``/run/chronotick/shm0``,
layout v3 in docs/protocol.md) at least once a second; ``ShmReader.now()`` maps it once,
then each call reads three clocks (REALTIME, MONOTONIC_RAW, REALTIME) and does arithmetic on
the daemon's published fit — no socket, no syscall besides the clock reads (vDSO). It returns
the same fields as the socket's ``now``.

Why the reader can do this alone: the daemon models the reference against CLOCK_MONOTONIC_RAW,
which nobody steers: ``θ(raw) = offset_ref + freq · (raw − t_ref)`` with
``reference = raw + epoch + θ(raw)``. Any step or slew of CLOCK_REALTIME only changes
``δ = REALTIME − RAW − epoch``, which the reader measures itself, so
``offset vs system = θ(raw) − δ``, and ``corrected = raw + epoch + θ(raw)`` needs no REALTIME
at all. A pending leap second travels in the segment and is applied exactly as the engine
does (chronotickd/core/leap.py). The one thing that can make ``θ`` wrong without the daemon
having said so is a suspend (RAW stops, real time goes on): it shows as δ jumping by more
than any slew could since the write, and then the reader refuses to answer
(``ShmUnavailable``; callers fall back to the socket) instead of serving a wrong narrow bound.
The same happens for a segment from another boot, a stopped daemon, or a torn read that the
retries cannot resolve.

Consistency: a seqlock (``generation`` odd while the daemon writes, even after) plus a CRC-32
of the payload, checked whenever the generation changes; readers keep the last good snapshot
and re-parse only when the generation moves, so the steady-state read is one 8-byte load.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from math import floor, sqrt
from typing import Any, NamedTuple

from chronotick_client.protocol import default_socket_path

MAGIC = 0x4B544843  # bytes "CHTK" in little-endian order
LAYOUT_VERSION = 3  # v1 (branch shm, never released) had no leap slot; v2 had no holdover
# (past void_after the answer was always the system clock's)
SEGMENT_SIZE = 256
DEFAULT_SHM = "/run/chronotick/shm0"
SHM_ENV = "CHRONOTICK_SHM"
BOOT_ID_ENV = "CHRONOTICK_BOOT_ID_FILE"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"

HEADER = struct.Struct("=IHHIIQ")  # magic, version, reserved, size, reserved, generation
# native "Q" (not "=Q"): CPython packs standard sizes byte by byte, native ones with one
# aligned 8-byte load/store, which is what a seqlock's generation needs
GEN = struct.Struct("Q")
GEN_OFFSET = 16
PAYLOAD_OFFSET = 24
CHECKSUM_OFFSET = 216
# epoch, write_raw, write_delta, write_interval, t_ref, t_last, stale_after, void_after (ns);
# offset_ref, freq, var_offset, var_freq, systematic, k, max_drift, unsync_bound (float);
# leap_raw (ns); state, leap, leap_flags, reserved; flags, reserved; boot_id, source;
# checksum; reserved
PAYLOAD = struct.Struct("=8q8dqBBBBHH16s32sI36x")
assert PAYLOAD_OFFSET + PAYLOAD.size == SEGMENT_SIZE
assert PAYLOAD_OFFSET + PAYLOAD.size - 40 == CHECKSUM_OFFSET

STATE_NONE = 0  # no usable estimate: unsynchronized, bound = unsync_bound
STATE_TRACKING = 1  # a fit; status from its age (stale_after, void_after)
STATE_RESTORED = 2  # a fit restored from disk: freerunning until fresh samples confirm it
FLAG_CLOSED = 1  # the daemon stopped; readers fall back to the socket
FLAG_SOCKET = 2  # the state cannot be expressed in the segment (e.g. two pending leaps)
# past void_after the midpoint is the line extrapolated (unsynchronized, bound at least
# unsync_bound); without it the system clock's (another daemon keeps it on time)
FLAG_HOLDOVER = 4
LEAP_NONE, LEAP_INSERT, LEAP_DELETE = 0, 1, 2  # the pending leap (NTP's leap indicator)
LEAP_CONFIRMED = 1  # leap_flags: a measurement after the leap showed the reference applied it
LEAP_SMEAR_DOUBT = 2  # references disagree: a 24 h smear is as plausible as the step
SMEAR_NS = 86_400 * 10**9

# REALTIME may run against RAW at the kernel's frequency adjustment (±500 ppm) plus an offset
# slew (500 ppm); a δ change beyond that since the write, plus 1 ms, is a step or a suspend.
# The reader tests ``since >> 10`` (977 ppm): a little stricter, never looser.
MAX_SLEW_RATE = 1e-3
STEP_TOLERANCE_NS = 1_000_000
WIDE_READ_NS = 50_000  # a (real, raw, real) spread beyond this was preempted: read again
STALE_WRITES = 5  # write intervals without a rewrite: the daemon is not watching any more
# the arithmetic is done in float ns: add this much to every bound so rounding never narrows
FLOAT_SLACK_NS = 2.0

REALTIME, RAW = time.CLOCK_REALTIME, time.CLOCK_MONOTONIC_RAW
assert (REALTIME, RAW) == (0, 4)  # Linux's ids, written as literals on the hot path
_cg = time.clock_gettime_ns  # vDSO: no syscall
SYNCHRONIZED, FREERUNNING, UNSYNCHRONIZED = "synchronized", "freerunning", "unsynchronized"


class ShmUnavailable(RuntimeError):
    """The segment cannot give an honest answer now; ask the daemon's socket instead."""


class _Torn(ValueError):
    """A copy taken while the daemon was writing: retry."""


class Params(NamedTuple):
    """One consistent snapshot of the segment's payload (times in ns on the RAW axis)."""

    epoch_ns: int
    write_raw_ns: int
    write_delta_ns: int
    write_interval_ns: int
    t_ref_ns: int
    t_last_ns: int
    stale_after_ns: int
    void_after_ns: int
    offset_ref: float
    freq: float
    var_offset: float
    var_freq: float
    systematic: float
    confidence_k: float
    max_drift: float
    unsync_bound: float
    leap_raw_ns: int
    state: int
    leap: int
    leap_flags: int
    flags: int
    boot_id: bytes
    source: str


def default_shm_path(socket_path: str | None = None) -> str:
    """``$CHRONOTICK_SHM``, else ``shm0`` beside the daemon's socket (``/run/chronotick/shm0``)."""
    env = os.environ.get(SHM_ENV)
    if env:
        return env
    return os.path.join(os.path.dirname(socket_path or default_socket_path()), "shm0")


def boot_id() -> bytes:
    """This boot's id as 16 bytes (zeros: unknown). The kernel's ``boot_id`` file, which the
    test rig may replace (``$CHRONOTICK_BOOT_ID_FILE``), else ``$CHRONOTICK_BOOT_ID`` (systemd's
    ``%b``, what the daemon uses under the unit's sandbox); dashes or not, any case."""
    path = os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = "" if os.environ.get(BOOT_ID_ENV) else os.environ.get("CHRONOTICK_BOOT_ID", "")
    try:
        raw = bytes.fromhex(text.strip().replace("-", ""))
    except ValueError:
        return bytes(16)
    return raw if len(raw) == 16 else bytes(16)


def pack_payload(p: Params) -> bytes:
    """The payload bytes of ``p`` with its checksum (the daemon's writer uses this)."""
    src = p.source.encode()[:31]
    body = PAYLOAD.pack(*p[:20], 0, p.flags, 0, p.boot_id, src, 0)
    n = CHECKSUM_OFFSET - PAYLOAD_OFFSET
    return body[:n] + struct.pack("=I", zlib.crc32(body[:n])) + body[n + 4:]


def parse(seg: bytes) -> Params:
    """Validate a copy of the whole segment taken between two equal, even generation reads.

    The copy's own generation field is not trusted (a bulk copy need not read it atomically);
    the CRC catches what the seqlock alone cannot on weakly ordered CPUs.
    """
    magic, version, _, size, _, _ = HEADER.unpack_from(seg, 0)
    if magic != MAGIC or version != LAYOUT_VERSION or size != SEGMENT_SIZE:
        raise ValueError(f"not a ChronoTick v{LAYOUT_VERSION} segment (magic {magic:#x}, "
                         f"version {version}, size {size})")
    f = PAYLOAD.unpack_from(seg, PAYLOAD_OFFSET)
    if zlib.crc32(seg[PAYLOAD_OFFSET:CHECKSUM_OFFSET]) != f[25]:
        raise _Torn("checksum mismatch (torn read)")
    source = f[24].rstrip(b"\0").decode(errors="replace")
    return Params(*f[:20], f[21], f[23], source)


def leap_correction(leap: int, leap_raw_ns: int, leap_flags: int, raw_ns: int
                    ) -> tuple[float, float]:
    """(shift, extra bound) in ns for the one pending leap, at ``raw_ns``: the same rule as
    chronotickd/core/leap.py ``correction`` (an unconfirmed leap covers both UTC with and
    without it; a smear doubt covers the 24 h smear too)."""
    if leap == LEAP_NONE:
        return 0.0, 0.0
    seconds = -1e9 if leap == LEAP_DELETE else 1e9
    step = -seconds if raw_ns >= leap_raw_ns else 0.0
    lo = hi = step
    if not leap_flags & LEAP_CONFIRMED and raw_ns >= leap_raw_ns:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if leap_flags & LEAP_SMEAR_DOUBT:
        frac = min(1.0, max(0.0, (raw_ns - (leap_raw_ns - SMEAR_NS // 2)) / SMEAR_NS))
        lo, hi = min(lo, -seconds * frac), max(hi, -seconds * frac)
    return (lo + hi) / 2, (hi - lo) / 2


# What ``prepare`` derives once per snapshot, so that a read is one tuple unpack and a few
# integer and float operations, all in ns.
Prepared = tuple[Any, ...]


def prepare(p: Params, own_boot: bytes | None = None) -> Prepared:
    """The snapshot in the shape the per-read arithmetic wants (checks that do not depend on
    the clock reads are done here, once). ``own_boot`` None or zeros: not checked."""
    refuse = None
    if p.flags & FLAG_CLOSED:
        refuse = "the daemon stopped writing the segment (closed)"
    elif p.flags & FLAG_SOCKET:
        refuse = "the daemon's state cannot be read from the segment now (ask the socket)"
    elif own_boot and any(own_boot) and any(p.boot_id) and p.boot_id != own_boot:
        refuse = "segment written during another boot"
    # past ``sync_until`` (RAW) the answer is freerunning: stale measurements, a restored
    # estimate, or a daemon that stopped rewriting the segment
    sync_until = min(p.stale_after_ns, p.write_raw_ns + STALE_WRITES * p.write_interval_ns)
    if p.state == STATE_RESTORED:
        sync_until = -(2**63)
    void_after = p.void_after_ns if p.state != STATE_NONE else -(2**63)
    k = p.confidence_k
    # bound(raw) = sys + sqrt(vo + vf·d²) + drift·max(0, raw − t_last) + width/2, all ns
    return (refuse, p.epoch_ns, p.epoch_ns + p.write_delta_ns, p.write_raw_ns, p.t_ref_ns,
            p.t_last_ns, sync_until, void_after, p.offset_ref * 1e9, p.freq,
            k * k * p.var_offset * 1e18, k * k * p.var_freq,
            p.systematic * 1e9 + FLOAT_SLACK_NS, p.max_drift, p.unsync_bound * 1e9,
            p.source, p.leap, p.leap_raw_ns, p.leap_flags, bool(p.flags & FLAG_HOLDOVER))


def fast_path(f: Prepared) -> Prepared:
    """The fields the inlined hot path (``ShmReader.now``/``now_ns``) needs, or None when
    this snapshot always takes the general path (a refusal pending, a leap announced)."""
    if f[0] is not None or f[16]:
        return None
    return f[1:8] + f[8:14] + (f[15],)  # epoch … void_after, off0 … drift, source


def compute_ns(f: Prepared, real: int, raw: int, width: int
               ) -> tuple[int, int, int, str, str, int, int]:
    """``(corrected, earliest, latest, status, source, as_of, void_after)`` in integer ns
    (as_of/void_after on today's REALTIME scale, 0 when unknown) for clocks read at
    ``real``/``raw`` with a REALTIME spread of ``width``. The interval is rounded outward.

    Raises ``ShmUnavailable`` when no honest answer exists: the daemon stopped, another boot,
    or δ = REALTIME − RAW − epoch moved since the write by more than a slew can (a step, or a
    suspend that stopped RAW).
    """
    (refuse, epoch, epoch_wd, write_raw, t_ref, t_last, sync_until, void_after, off0, freq,
     vo, vf, sys_ns, drift, unsync, source, leap, leap_raw, leap_flags, holdover) = f
    if refuse is not None:
        raise ShmUnavailable(refuse)
    since = raw - write_raw
    if since < -1_000_000_000:
        raise ShmUnavailable("segment written in the future (another boot?)")
    rr = real - raw  # = epoch + δ
    step = rr - epoch_wd  # δ now − δ at the write
    # δ is known to ±width/2 (a preemption between the reads widens it, never hides a step)
    if (step if step >= 0 else -step) > STEP_TOLERANCE_NS + width + (since >> 10):
        raise ShmUnavailable("CLOCK_REALTIME stepped or the system slept since the last write")
    void = raw > void_after
    if void and not holdover:
        hb = int(unsync) + (width >> 1) + 1
        return real, real - hb, real + hb, UNSYNCHRONIZED, "system", 0, 0
    d = raw - t_ref
    age = raw - t_last
    th = off0 + freq * d
    b = sys_ns + sqrt(vo + vf * d * d) + (drift * age if age > 0 else 0.0) + (width >> 1)
    if leap:
        shift, extra = leap_correction(leap, leap_raw, leap_flags, raw)
        th += shift
        b += extra
    # the reference is raw + epoch + θ; ⌊θ + ½⌋ is within 0.5 ns of θ and ⌊b⌋ within 1 ns of b,
    # so corrected ± (⌊b⌋ + 2) contains [θ − b, θ + b] (math.floor: the cheapest float → int)
    c = raw + epoch + floor(th + 0.5)
    if void:  # holdover: the line's guess, vouched for no better than the system clock
        hb = max(floor(b), int(unsync) + (width >> 1)) + 2
        return c, c - hb, c + hb, UNSYNCHRONIZED, source, t_last + rr, void_after + rr
    hb = floor(b) + 2
    return (c, c - hb, c + hb, SYNCHRONIZED if raw <= sync_until else FREERUNNING, source,
            t_last + rr, void_after + rr)


def compute(p: Params, real_ns: int, raw_ns: int, width_ns: int, own_boot: bytes | None = None
            ) -> tuple[int, int, int, str, str, int, int]:
    """``compute_ns`` on a parsed snapshot (tests and tools; the reader caches ``prepare``)."""
    return compute_ns(prepare(p, own_boot), real_ns, raw_ns, width_ns)


def as_now_result(system_time_ns: int, ans: tuple[int, int, int, str, str, int, int]
                  ) -> dict[str, Any]:
    """The socket's ``now`` result from a ``compute_ns`` answer (same keys, same meaning:
    ``corrected ± bound_ns`` covers ``[earliest, latest]``)."""
    corr, lo, hi, status, source, as_of, void = ans
    return {
        "corrected_time_ns": corr,
        "system_time_ns": system_time_ns,
        "offset_ns": corr - system_time_ns,
        "bound_ns": max(corr - lo, hi - corr),
        "earliest_ns": lo,
        "latest_ns": hi,
        "status": status,
        "source": source,
        "as_of_ns": as_of,
        "age_ns": max(0, system_time_ns - as_of) if as_of else None,
        "void_after_ns": void,
    }


class ShmReader:
    """One mapping of the segment; one reader per thread (it caches the last snapshot).

    ``now()`` returns the socket's ``now`` dict; ``now_ns()`` the tuple ``(corrected_ns,
    earliest_ns, latest_ns, status)`` for callers that stamp events and want the cheapest read.
    Both raise ``ShmUnavailable`` when the segment cannot answer honestly (ask the socket).
    """

    RETRIES = 100_000  # a daemon writes once a second; only a stress test comes near this

    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_shm_path()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise ShmUnavailable(f"cannot open {self.path}: {exc.strerror}; is chronotickd "
                                 "running with shm.path set to it?") from None
        try:
            st = os.fstat(fd)
            if st.st_size < SEGMENT_SIZE:
                raise ShmUnavailable(f"{self.path} is {st.st_size} bytes, not a ChronoTick "
                                     "segment")
            self._mm = mmap.mmap(fd, SEGMENT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        # the generation as a native aligned u64 through a memoryview: one 8-byte load per
        # read, cheaper than struct.unpack_from
        self._words = memoryview(self._mm).cast("Q")
        self._boot = boot_id()
        # (generation, params, prepared): one attribute, so a reader never sees a mix
        self._snap: tuple[int, Params, Prepared, Prepared] = (-1, None, None, None)  # type: ignore[assignment]
        try:
            self.snapshot()
        except ShmUnavailable:
            self.close()
            raise

    def close(self) -> None:
        words = getattr(self, "_words", None)
        if words is not None:
            words.release()
            self._words = None  # type: ignore[assignment]
        if not self._mm.closed:
            self._mm.close()

    def __enter__(self) -> ShmReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> Params:
        """The newest consistent payload (re-parsed only when the generation moved): read the
        generation, copy, read it again; retry while odd or changed; then check the CRC."""
        mm = self._mm
        words = self._words
        gen = words[2]
        snap = self._snap
        if snap[0] == gen:
            return snap[1]
        problem = "segment never written"
        for _ in range(self.RETRIES):
            if gen == 0:
                break
            if not gen & 1:
                seg = mm[:SEGMENT_SIZE]
                after = words[2]
                if after == gen:
                    try:
                        params = parse(seg)
                    except _Torn as exc:
                        problem = str(exc)
                    except ValueError as exc:  # wrong magic/version/size: retrying won't help
                        problem = str(exc)
                        break
                    else:
                        f = prepare(params, self._boot)
                        self._snap = (gen, params, f, fast_path(f))
                        return params
                gen = after
            else:
                problem = "segment being written"
                gen = words[2]
        if snap[1] is not None:  # a writer mid-update: the last snapshot is still a promise
            return snap[1]
        raise ShmUnavailable(f"{self.path}: {problem}")

    def _prepared(self) -> Prepared:
        snap = self._snap
        if snap[0] != self._words[2]:
            self.snapshot()
            snap = self._snap
        return snap[2]

    def _clocks(self) -> tuple[int, int, int]:
        """(real, raw, width): REALTIME, MONOTONIC_RAW, REALTIME back to back (vDSO); once
        more when preempted between the reads (a wide read gives a wide bound)."""
        cg = _cg
        r1 = cg(REALTIME)
        raw = cg(RAW)
        width = cg(REALTIME) - r1
        if width > WIDE_READ_NS or width < 0:
            a = cg(REALTIME)
            rw = cg(RAW)
            w = cg(REALTIME) - a
            if 0 <= w < width or width < 0:
                r1, raw, width = a, rw, w
            if width < 0:  # REALTIME stepped back between both pairs of reads
                raise ShmUnavailable("CLOCK_REALTIME stepped while reading it")
        return r1 + (width >> 1), raw, width

    def now(self) -> dict[str, Any]:
        """The socket's ``now`` result, from the segment alone. The hot path: ``compute_ns``'s
        common case inlined (tests/test_shm.py checks they agree), anything else through it."""
        snap = self._snap
        if snap[0] != self._words[2]:
            self.snapshot()
            snap = self._snap
        r1 = _cg(0)  # CLOCK_REALTIME
        raw = _cg(4)  # CLOCK_MONOTONIC_RAW
        width = _cg(0) - r1
        real = r1 + (width >> 1)
        fast = snap[3]
        if fast is None or not 0 <= width <= WIDE_READ_NS:
            return as_now_result(*self._general(snap[2], real, raw, width))
        (epoch, epoch_wd, write_raw, t_ref, t_last, sync_until, void_after, off0, freq, vo, vf,
         sys_ns, drift, source) = fast
        since = raw - write_raw
        rr = real - raw
        tol = STEP_TOLERANCE_NS + width + (since >> 10)
        if raw > void_after or since < -1_000_000_000 or not -tol <= rr - epoch_wd <= tol:
            return as_now_result(*self._general(snap[2], real, raw, width))
        d = raw - t_ref
        age = raw - t_last
        th = off0 + freq * d
        hb = floor(sys_ns + sqrt(vo + vf * d * d) + (drift * age if age > 0 else 0.0)
                 + (width >> 1)) + 2
        c = raw + epoch + floor(th + 0.5)
        return {"corrected_time_ns": c, "system_time_ns": real, "offset_ns": c - real,
                "bound_ns": hb, "earliest_ns": c - hb, "latest_ns": c + hb,
                "status": SYNCHRONIZED if raw <= sync_until else FREERUNNING,
                "source": source, "as_of_ns": t_last + rr, "age_ns": age if age > 0 else 0,
                "void_after_ns": void_after + rr}

    def now_ns(self) -> tuple[int, int, int, str]:
        """``(corrected_ns, earliest_ns, latest_ns, status)``: ``now()`` without the dict, for
        callers that stamp events and want the cheapest read. Same inlined arithmetic."""
        snap = self._snap
        if snap[0] != self._words[2]:
            self.snapshot()
            snap = self._snap
        r1 = _cg(0)  # CLOCK_REALTIME
        raw = _cg(4)  # CLOCK_MONOTONIC_RAW
        width = _cg(0) - r1
        fast = snap[3]
        if fast is None or not 0 <= width <= WIDE_READ_NS:
            return self._general(snap[2], r1 + (width >> 1), raw, width)[1][:4]
        (epoch, epoch_wd, write_raw, t_ref, t_last, sync_until, void_after, off0, freq, vo, vf,
         sys_ns, drift, _source) = fast
        since = raw - write_raw
        tol = STEP_TOLERANCE_NS + width + (since >> 10)
        if (raw > void_after or since < -1_000_000_000
                or not -tol <= r1 + (width >> 1) - raw - epoch_wd <= tol):
            return self._general(snap[2], r1 + (width >> 1), raw, width)[1][:4]
        d = raw - t_ref
        age = raw - t_last
        th = off0 + freq * d
        hb = floor(sys_ns + sqrt(vo + vf * d * d) + (drift * age if age > 0 else 0.0)
                 + (width >> 1)) + 2
        c = raw + epoch + floor(th + 0.5)
        return c, c - hb, c + hb, SYNCHRONIZED if raw <= sync_until else FREERUNNING

    def _general(self, f: Prepared, real: int, raw: int, width: int
                 ) -> tuple[int, tuple[int, int, int, str, str, int, int]]:
        """``(system_time_ns, compute_ns(...))`` off the fast path: a preempted read is done
        again (a wide read gives a wide bound); refusals raise ``ShmUnavailable``."""
        if width > WIDE_READ_NS or width < 0:
            f = self._prepared()
            real, raw, width = self._clocks()
        return real, compute_ns(f, real, raw, width)
