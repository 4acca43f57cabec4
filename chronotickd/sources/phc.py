"""Read a PTP hardware clock (PHC) against the system clock, with read access only.

Why not ``phc_ctl``: it opens ``/dev/ptpN`` read-write, so the device node had to grant write,
and a process that may write a PHC may step or steer it (``clock_settime``/``clock_adjtime``
on the clock id of the descriptor). Reading needs no write access in the kernel: in
``kernel/time/posix-clock.c`` only ``pc_clock_settime`` and ``pc_clock_adjtime`` check
``FMODE_WRITE`` (``pc_clock_gettime`` does not), and in ``drivers/ptp/ptp_chardev.c`` only the
EXTTS / PEROUT / ENABLE_PPS / PIN_SETFUNC ioctls do, never the ``PTP_SYS_OFFSET*`` ones. So
the daemon opens the device ``O_RDONLY`` and asks the kernel itself, in this order:

1. ``PTP_SYS_OFFSET_EXTENDED``: per sample, the driver's own system timestamps taken right
   around the PHC read, ``[sys_before, phc, sys_after]`` (drivers with ``gettimex64``);
2. ``PTP_SYS_OFFSET``: ``sys, phc, sys, phc, …, sys``, system time read by the PTP core around
   each PHC read (every PHC driver);
3. ``clock_gettime`` on the descriptor's dynamic clock id (``FD_TO_CLOCKID``) between two
   ``CLOCK_REALTIME`` reads.

Each gives triples (before, PHC, after) in ns, the system times being CLOCK_REALTIME (a zero
``clockid`` in the EXTENDED request: what kernels before 6.12 require, and REALTIME after);
the narrowest triple wins: PHC − REALTIME = phc − (before + after) / 2, within half its width.
The PTP source (chronotickd/sources/ptp.py) pairs that with its own MONOTONIC_RAW/REALTIME
readings around the call to get θ = reference − (raw + epoch).

``ptp.phc_device`` may name a device (``/dev/ptp0``), a network interface (its PHC is found
with ``ETHTOOL_GET_TS_INFO``, as ``phc_ctl`` and ``ptp4l`` do) or ``CLOCK_REALTIME`` (the
system clock itself, for tests: PHC − system is then 0 within the read's width).

Struct layouts and ioctl numbers are those of ``include/uapi/linux/ptp_clock.h``::

    struct ptp_clock_time { __s64 sec; __u32 nsec; __u32 reserved; };           16 bytes
    struct ptp_sys_offset { unsigned int n_samples; unsigned int rsv[3];
                            struct ptp_clock_time ts[2 * PTP_MAX_SAMPLES + 1]; }  832 bytes
    struct ptp_sys_offset_extended { unsigned int n_samples; clockid (was rsv[0]);
                            unsigned int rsv[2]; struct ptp_clock_time ts[25][3]; } 1216 bytes
    PTP_SYS_OFFSET          _IOW('=', 5, struct ptp_sys_offset)
    PTP_SYS_OFFSET_EXTENDED _IOWR('=', 9, struct ptp_sys_offset_extended)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

PTP_CLK_MAGIC = ord("=")
PTP_MAX_SAMPLES = 25
CLOCK_TIME = struct.Struct("=qII")  # struct ptp_clock_time
HEAD = struct.Struct("=IiII")  # n_samples, clockid (rsv[0] before 6.12), rsv[2]
SYS_OFFSET_SIZE = HEAD.size + (2 * PTP_MAX_SAMPLES + 1) * CLOCK_TIME.size
EXTENDED_SIZE = HEAD.size + PTP_MAX_SAMPLES * 3 * CLOCK_TIME.size
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    """The kernel's ``_IOC(dir, type, nr, size)`` for type ``PTP_CLK_MAGIC``."""
    return (direction << 30) | (size << 16) | (PTP_CLK_MAGIC << 8) | nr


PTP_SYS_OFFSET = _ioc(_IOC_WRITE, 5, SYS_OFFSET_SIZE)
PTP_SYS_OFFSET_EXTENDED = _ioc(_IOC_READ | _IOC_WRITE, 9, EXTENDED_SIZE)
CLOCKFD = 3
SIOCETHTOOL = 0x8946
ETHTOOL_GET_TS_INFO = 0x41
_TS_INFO = struct.Struct("=IIi3I3II3I")  # struct ethtool_ts_info (44 bytes)
DEFAULT_SAMPLES = 9
# the ioctl is not there, or not for this driver: try the next way of reading
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS)

Triple = tuple[int, int, int]  # (system before, PHC, system after), ns


class PhcError(OSError):
    """The PHC cannot be read; the message names ``ptp.phc_device`` and what to do."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key  # kind of problem, so the source logs each kind once
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class PhcReading:
    phc_minus_sys_ns: float  # PHC − CLOCK_REALTIME at ``sys_ns``
    half_width_ns: float  # the narrowest triple's half width: the reading's uncertainty
    sys_ns: int  # CLOCK_REALTIME at the middle of that triple
    method: str  # extended | sys_offset | clock_gettime | realtime


def ns(sec: int, nsec: int) -> int:
    """A ``ptp_clock_time`` in ns; "the sign of the seconds field applies to the whole value"."""
    return sec * 1_000_000_000 + nsec if sec >= 0 else sec * 1_000_000_000 - nsec


def fd_to_clockid(fd: int) -> int:
    """``FD_TO_CLOCKID(fd)``: the dynamic POSIX clock id of an open PHC descriptor."""
    return ((~fd) << 3) | CLOCKFD


def extended_request(samples: int) -> bytearray:
    """The buffer for ``PTP_SYS_OFFSET_EXTENDED``: ``n_samples``, clockid 0 (REALTIME)."""
    buf = bytearray(EXTENDED_SIZE)
    HEAD.pack_into(buf, 0, samples, 0, 0, 0)
    return buf


def sys_offset_request(samples: int) -> bytearray:
    buf = bytearray(SYS_OFFSET_SIZE)
    HEAD.pack_into(buf, 0, samples, 0, 0, 0)
    return buf


def _times(buf: bytes | bytearray, count: int) -> list[int]:
    return [ns(sec, nsec) for sec, nsec, _r in
            (CLOCK_TIME.unpack_from(buf, HEAD.size + i * CLOCK_TIME.size) for i in range(count))]


def extended_triples(buf: bytes | bytearray, samples: int) -> list[Triple]:
    """``ts[i][0..2]`` of a filled ``ptp_sys_offset_extended``: [sys, phc, sys] per sample."""
    t = _times(buf, 3 * samples)
    return [(t[3 * i], t[3 * i + 1], t[3 * i + 2]) for i in range(samples)]


def sys_offset_triples(buf: bytes | bytearray, samples: int) -> list[Triple]:
    """The interleaved ``sys, phc, sys, …, sys`` of a filled ``ptp_sys_offset``: each PHC
    reading with the system times on either side."""
    t = _times(buf, 2 * samples + 1)
    return [(t[2 * i], t[2 * i + 1], t[2 * i + 2]) for i in range(samples)]


def narrowest(triples: list[Triple]) -> Triple:
    """The triple whose system times are closest together (least scheduling/bus noise);
    triples running backwards (REALTIME stepped in between) are left out."""
    valid = [t for t in triples if t[2] >= t[0]]
    if not valid:
        raise PhcError("phc-steps", "every PHC reading straddled a step of the system clock")
    return min(valid, key=lambda t: t[2] - t[0])


def reading(best: Triple, method: str) -> PhcReading:
    before, phc, after = best
    # in integers first: ns since 1970 as a float are only good to 256 ns
    return PhcReading((2 * phc - before - after) / 2.0, (after - before) / 2.0,
                      (before + after) // 2, method)


def interface_phc(iface: str) -> int:
    """The PHC index of a network interface (``ETHTOOL_GET_TS_INFO``; -1: it has none)."""
    info = ctypes.create_string_buffer(_TS_INFO.size)
    struct.pack_into("=I", info, 0, ETHTOOL_GET_TS_INFO)
    name = iface.encode()[:15]
    ifreq = struct.pack("16sP", name, ctypes.addressof(info)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    return _TS_INFO.unpack(info.raw)[2]


class PhcReader:
    """One PHC, opened read-only on first use and kept open; ``read()`` gives a reading.

    The functions doing I/O are injectable so the packing, the fallbacks and the error
    messages can be tested without a PHC.
    """

    def __init__(self, device: str, samples: int = DEFAULT_SAMPLES,
                 open_fn: Callable[[str, int], int] = os.open,
                 ioctl: Callable[[int, int, bytearray], object] = fcntl.ioctl,
                 gettime: Callable[[int], int] = time.clock_gettime_ns,
                 phc_index: Callable[[str], int] = interface_phc) -> None:
        self.device = device
        self.samples = max(1, min(samples, PTP_MAX_SAMPLES))
        self._open, self._ioctl, self._gettime = open_fn, ioctl, gettime
        self._phc_index = phc_index
        self.fd: int | None = None
        self.path = ""
        self.method = ""  # the way that worked last; tried first next time

    def _resolve(self) -> str:
        dev = self.device
        if dev.startswith("/"):
            return dev
        try:
            index = self._phc_index(dev)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise PhcError("phc-nodev", f"no network interface {dev!r} (ptp.phc_device): "
                               "name the NIC's /dev/ptpN or an existing interface, or leave "
                               "ptp.phc_device empty for software timestamping") from None
            raise PhcError("phc-ethtool", f"cannot ask interface {dev!r} for its PHC "
                           f"(ptp.phc_device): {exc.strerror or exc}") from None
        if index < 0:
            raise PhcError("phc-none", f"no PHC: interface {dev!r} (ptp.phc_device) does not "
                           "have a PHC; use software timestamping (leave ptp.phc_device "
                           "empty) or name the NIC's /dev/ptpN")
        return f"/dev/ptp{index}"

    def open(self) -> None:
        if self.fd is not None or self.device == "CLOCK_REALTIME":
            return
        path = self.path = self._resolve()
        try:
            self.fd = self._open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PhcError("phc-missing", f"no PHC device {path} (ptp.phc_device): no such "
                           "file; set ptp.phc_device to the NIC's PHC (`ethtool -T IFACE` "
                           "shows its index) or leave it empty for software "
                           "timestamping") from None
        except PermissionError:
            raise PhcError("phc-perm", f"permission denied opening {path} read-only "
                           "(ptp.phc_device): the daemon's user needs read access (the udev "
                           "rule packaging/udev/60-chronotick-ptp.rules gives group chronotick "
                           "mode 0640; the unit needs DeviceAllow=char-ptp r)") from None
        except OSError as exc:
            raise PhcError("phc-open", f"cannot open {path} (ptp.phc_device): "
                           f"{exc.strerror or exc}") from None

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def read(self) -> PhcReading:
        """PHC − CLOCK_REALTIME from the narrowest of ``samples`` readings; raises PhcError."""
        if self.device == "CLOCK_REALTIME":
            return reading(narrowest(self._sandwich(time.CLOCK_REALTIME)), "realtime")
        self.open()
        order = ["extended", "sys_offset", "clock_gettime"]
        if self.method in order:
            order.remove(self.method)
            order.insert(0, self.method)
        last: OSError | None = None
        for method in order:
            try:
                triples = getattr(self, "_" + method)()
            except OSError as exc:
                if isinstance(exc, PhcError):
                    raise
                if exc.errno in _UNSUPPORTED:
                    last = exc
                    continue
                self.close()  # e.g. ENODEV: the NIC went away; reopen next time
                raise PhcError("phc-read", f"cannot read {self.path} (ptp.phc_device): "
                               f"{exc.strerror or exc}") from None
            self.method = method
            return reading(narrowest(triples), method)
        raise PhcError("phc-unsupported", f"{self.path} (ptp.phc_device) supports none of "
                       f"PTP_SYS_OFFSET_EXTENDED, PTP_SYS_OFFSET, clock_gettime: "
                       f"{getattr(last, 'strerror', None) or last}")

    def _extended(self) -> list[Triple]:
        assert self.fd is not None
        buf = extended_request(self.samples)
        self._ioctl(self.fd, PTP_SYS_OFFSET_EXTENDED, buf)
        return extended_triples(buf, self.samples)

    def _sys_offset(self) -> list[Triple]:
        assert self.fd is not None
        buf = sys_offset_request(self.samples)
        self._ioctl(self.fd, PTP_SYS_OFFSET, buf)
        return sys_offset_triples(buf, self.samples)

    def _clock_gettime(self) -> list[Triple]:
        assert self.fd is not None
        return self._sandwich(fd_to_clockid(self.fd))

    def _sandwich(self, clockid: int) -> list[Triple]:
        get, real = self._gettime, time.CLOCK_REALTIME
        out = []
        for _ in range(self.samples):
            before = get(real)
            phc = get(clockid)
            out.append((before, phc, get(real)))
        return out
