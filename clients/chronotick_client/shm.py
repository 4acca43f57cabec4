"""Read chronotickd's shared-memory segment: corrected time at about the cost of a clock read.

Standard library only. The daemon rewrites a small segment (default ``/run/chronotick/shm0``,
layout v1 in docs/protocol.md) at least once a second; ``ShmReader.now()`` maps it once,
then each call reads three clocks (REALTIME, MONOTONIC_RAW, REALTIME) and does arithmetic on
the daemon's published fit — no socket, no syscall besides the clock reads (vDSO). It returns
the same fields as the socket's ``now``.

Why the reader can do this alone: the daemon models the reference against CLOCK_MONOTONIC_RAW,
which nobody steers: ``θ(raw) = offset_ref + freq · (raw − t_ref)`` with
``reference = raw + epoch + θ(raw)``. Any step or slew of CLOCK_REALTIME only changes
``δ = REALTIME − RAW − epoch``, which the reader measures itself, so
``offset vs system = θ(raw) − δ``. The one thing that can make ``θ`` wrong without the daemon
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

import math
import mmap
import os
import struct
import time
import uuid
import zlib
from typing import Any, NamedTuple

from chronotick_client.protocol import default_socket_path, now_result

MAGIC = 0x4B544843  # bytes "CHTK" in little-endian order
LAYOUT_VERSION = 1
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
CHECKSUM_OFFSET = 240
# epoch, write_raw, write_delta, write_interval, t_ref, t_last, stale_after, void_after (ns);
# offset_ref, freq, var_offset, var_freq, systematic, k, max_drift, unsync_bound (float);
# state, leap, flags, reserved, boot_id, source, checksum, reserved, reserved
PAYLOAD = struct.Struct("=8q8dBBHI16s64sIIq")
assert PAYLOAD_OFFSET + PAYLOAD.size == SEGMENT_SIZE

STATE_NONE = 0  # no usable estimate: unsynchronized, bound = unsync_bound
STATE_TRACKING = 1  # a fit; status from its age (stale_after, void_after)
STATE_RESTORED = 2  # a fit restored from disk: freerunning until fresh samples confirm it
FLAG_CLOSED = 1  # the daemon stopped; readers fall back to the socket

# REALTIME may run against RAW at the kernel's frequency adjustment (±500 ppm) plus an offset
# slew (500 ppm); a δ change beyond that since the write, plus 1 ms, is a step or a suspend.
MAX_SLEW_RATE = 1e-3
STEP_TOLERANCE_NS = 1_000_000
WIDE_READ_NS = 50_000  # a (real, raw, real) spread beyond this was preempted: read again
STALE_WRITES = 5  # write intervals without a rewrite: the daemon is not watching any more

REALTIME, RAW = time.CLOCK_REALTIME, time.CLOCK_MONOTONIC_RAW
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
    state: int
    leap: int
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
    """This boot's id (16 bytes); the test rig may point ``$CHRONOTICK_BOOT_ID_FILE`` elsewhere."""
    path = os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE
    try:
        with open(path) as f:
            return uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


def pack_payload(p: Params) -> bytes:
    """The payload bytes of ``p`` with its checksum (the daemon's writer uses this)."""
    src = p.source.encode()[:63]
    body = PAYLOAD.pack(*p[:19], 0, p.boot_id, src, 0, 0, 0)
    crc = zlib.crc32(body[: CHECKSUM_OFFSET - PAYLOAD_OFFSET])
    return body[: CHECKSUM_OFFSET - PAYLOAD_OFFSET] + struct.pack("=I", crc) + body[-12:]


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
    if zlib.crc32(seg[PAYLOAD_OFFSET:CHECKSUM_OFFSET]) != f[22]:
        raise _Torn("checksum mismatch (torn read)")
    source = f[21].rstrip(b"\0").decode(errors="replace")
    return Params(*f[:19], f[20], source)


# What ``prepare`` derives once per snapshot, so a read is one tuple unpack and arithmetic.
Prepared = tuple[Any, ...]


def prepare(p: Params, own_boot: bytes | None = None) -> Prepared:
    """The snapshot in the shape the per-read arithmetic wants (checks that do not depend on
    the clock reads are done here, once)."""
    refuse = None
    if p.flags & FLAG_CLOSED:
        refuse = "the daemon stopped writing the segment (closed)"
    elif own_boot is not None and p.boot_id != own_boot:
        refuse = "segment written during another boot"
    # past ``sync_until`` (RAW) the answer is freerunning: stale measurements, a restored
    # estimate, or a daemon that stopped rewriting the segment
    sync_until = min(p.stale_after_ns, p.write_raw_ns + STALE_WRITES * p.write_interval_ns)
    if p.state == STATE_RESTORED:
        sync_until = -(2**63)
    void_after = p.void_after_ns if p.state != STATE_NONE else -(2**63)
    return (refuse, p.epoch_ns, p.write_raw_ns, p.write_delta_ns, p.t_ref_ns, p.t_last_ns,
            sync_until, void_after, p.offset_ref, p.freq, p.var_offset, p.var_freq,
            p.systematic, p.confidence_k, p.max_drift, p.unsync_bound, p.source)


def compute_prepared(f: Prepared, real_ns: int, raw_ns: int, width_ns: int
                     ) -> tuple[float, float, str, str, float, float]:
    """``compute`` on a ``prepare``d snapshot (the reader's hot path)."""
    (refuse, epoch, write_raw, write_delta, t_ref, t_last, sync_until, void_after, offset_ref,
     freq, var_offset, var_freq, systematic, k, max_drift, unsync_bound, source) = f
    if refuse is not None:
        raise ShmUnavailable(refuse)
    delta = real_ns - raw_ns - epoch
    since = raw_ns - write_raw
    if since < -1_000_000_000:
        raise ShmUnavailable("segment written in the future (another boot?)")
    # δ is known to ±width/2 (a preemption between the reads widens it, never hides a step)
    if abs(delta - write_delta) > (STEP_TOLERANCE_NS + (width_ns >> 1)
                                   + MAX_SLEW_RATE * abs(since)):
        raise ShmUnavailable("CLOCK_REALTIME stepped or the system slept since the last write")
    half = width_ns * 0.5e-9
    if raw_ns > void_after:
        return 0.0, unsync_bound + half, UNSYNCHRONIZED, "system", 0.0, 0.0
    dt = (raw_ns - t_ref) * 1e-9
    age = raw_ns - t_last
    bound = (systematic + k * math.sqrt(var_offset + var_freq * dt * dt)
             + max_drift * (age * 1e-9 if age > 0 else 0.0) + half)
    shift = epoch + delta  # RAW → REALTIME now
    return (offset_ref + freq * dt - delta * 1e-9, bound,
            SYNCHRONIZED if raw_ns <= sync_until else FREERUNNING, source,
            (t_last + shift) * 1e-9, (void_after + shift) * 1e-9)


def compute(p: Params, real_ns: int, raw_ns: int, width_ns: int, own_boot: bytes | None = None
            ) -> tuple[float, float, str, str, float, float]:
    """``(offset, bound, status, source, as_of, void_after)`` like ``ClockState.answer``
    (seconds; as_of/void_after as REALTIME) for clocks read at ``real_ns``/``raw_ns`` with a
    REALTIME spread of ``width_ns``. Raises ``ShmUnavailable`` when no honest answer exists:
    the daemon stopped, another boot, or δ = REALTIME − RAW − epoch moved since the write by
    more than a slew can (a step, or a suspend that stopped RAW)."""
    return compute_prepared(prepare(p, own_boot), real_ns, raw_ns, width_ns)


class ShmReader:
    """One mapping of the segment. Not thread-safe (keeps the last snapshot); one per thread."""

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
        self._boot = boot_id()
        # (generation, params, prepared): one attribute, so threads never see a mix
        self._snap: tuple[int, Params, Prepared] | None = None
        try:
            self.snapshot()
        except ShmUnavailable:
            self._mm.close()
            raise

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> ShmReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> Params:
        """The newest consistent payload (re-parsed only when the generation moved)."""
        mm = self._mm
        gen = GEN.unpack_from(mm, GEN_OFFSET)[0]
        snap = self._snap
        if snap is not None and snap[0] == gen:
            return snap[1]
        problem = "segment never written"
        read_gen = GEN.unpack_from
        for _ in range(self.RETRIES):
            if gen == 0:
                break
            if not gen & 1:
                seg = mm[:SEGMENT_SIZE]
                after = read_gen(mm, GEN_OFFSET)[0]
                if after == gen:
                    try:
                        params = parse(seg)
                    except _Torn as exc:
                        problem = str(exc)
                    except ValueError as exc:  # wrong magic/version/size: retrying won't help
                        problem = str(exc)
                        break
                    else:
                        self._snap = (gen, params, prepare(params, self._boot))
                        return params
                gen = after
            else:
                problem = "segment being written"
                gen = read_gen(mm, GEN_OFFSET)[0]
        if snap is not None:  # a writer mid-update: the last snapshot is still a promise
            return snap[1]
        raise ShmUnavailable(f"{self.path}: {problem}")

    def _prepared(self) -> Prepared:
        snap = self._snap
        if snap is None or snap[0] != GEN.unpack_from(self._mm, GEN_OFFSET)[0]:
            self.snapshot()
            snap = self._snap
            assert snap is not None
        return snap[2]

    def answer(self) -> tuple[int, tuple[float, float, str, str, float, float]]:
        """``(system_time_ns, (offset, bound, status, source, as_of, void_after))``."""
        f = self._prepared()
        cg = time.clock_gettime_ns
        real1 = cg(REALTIME)
        raw = cg(RAW)
        width = cg(REALTIME) - real1
        if width > WIDE_READ_NS:  # preempted between the reads: once more for a tight bound
            r1 = cg(REALTIME)
            rw = cg(RAW)
            w = cg(REALTIME) - r1
            if w < width:
                real1, raw, width = r1, rw, w
        real = real1 + (width >> 1)
        return real, compute_prepared(f, real, raw, width)

    def now(self) -> dict[str, Any]:
        """The socket's ``now`` result, from the segment alone (``answer`` without its call
        overhead: this is the hot path)."""
        snap = self._snap
        if snap is None or snap[0] != GEN.unpack_from(self._mm, GEN_OFFSET)[0]:
            self.snapshot()
            snap = self._snap
            assert snap is not None
        cg = time.clock_gettime_ns
        real1 = cg(REALTIME)
        raw = cg(RAW)
        width = cg(REALTIME) - real1
        if width > WIDE_READ_NS:  # preempted: ``answer`` reads the clocks again
            return now_result(*self._flat(self.answer()))
        real = real1 + (width >> 1)
        return now_result(real, *compute_prepared(snap[2], real, raw, width))

    @staticmethod
    def _flat(ans: tuple[int, tuple[float, float, str, str, float, float]]) -> tuple[Any, ...]:
        return (ans[0], *ans[1])


def open_reader(path: str | None = None, socket_path: str | None = None) -> ShmReader | None:
    """A reader when a usable segment is there, else None (callers use the socket)."""
    try:
        return ShmReader(path or default_shm_path(socket_path))
    except ShmUnavailable:
        return None
