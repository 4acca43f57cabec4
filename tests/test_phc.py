"""The read-only PHC reader (chronotickd/sources/phc.py) without a PHC: ioctl numbers and
struct layouts checked against include/uapi/linux/ptp_clock.h (mirrored here with ctypes,
natural alignment as the kernel's C), buffers filled the way ptp_chardev.c fills them, the
narrowest-triple choice, the fallbacks and their error messages; and the parts this machine's
kernel can answer for real (ETHTOOL_GET_TS_INFO on `lo`, the ioctls on a non-PHC descriptor)."""

from __future__ import annotations

import ctypes
import errno
import os
import time
from typing import Any

import pytest

from chronotickd.sources import phc
from chronotickd.sources.phc import PhcError, PhcReader


class PtpClockTime(ctypes.Structure):  # struct ptp_clock_time
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32)]


class PtpSysOffset(ctypes.Structure):  # struct ptp_sys_offset
    _fields_ = [("n_samples", ctypes.c_uint), ("rsv", ctypes.c_uint * 3),
                ("ts", PtpClockTime * (2 * 25 + 1))]


class PtpSysOffsetExtended(ctypes.Structure):  # struct ptp_sys_offset_extended
    _fields_ = [("n_samples", ctypes.c_uint), ("clockid", ctypes.c_int),
                ("rsv", ctypes.c_uint * 2), ("ts", (PtpClockTime * 3) * 25)]


def _ioc(direction: int, nr: int, size: int) -> int:  # asm-generic/ioctl.h
    return (direction << 30) | (ord("=") << 8) | nr | (size << 16)


def test_layouts_and_ioctl_numbers_match_the_header() -> None:
    assert ctypes.sizeof(PtpClockTime) == phc.CLOCK_TIME.size == 16
    assert ctypes.sizeof(PtpSysOffset) == phc.SYS_OFFSET_SIZE == 832
    assert ctypes.sizeof(PtpSysOffsetExtended) == phc.EXTENDED_SIZE == 1216
    assert PtpSysOffset.ts.offset == PtpSysOffsetExtended.ts.offset == phc.HEAD.size
    # _IOW('=', 5, struct ptp_sys_offset), _IOWR('=', 9, struct ptp_sys_offset_extended)
    assert phc.PTP_SYS_OFFSET == _ioc(1, 5, 832) == 0x43403D05
    assert phc.PTP_SYS_OFFSET_EXTENDED == _ioc(3, 9, 1216) == 0xC4C03D09
    assert phc.fd_to_clockid(3) == -29  # ((~(clockid_t)3) << 3) | CLOCKFD


def test_requests_ask_for_n_samples_against_realtime() -> None:
    """Kernels before 6.12 refuse a non-zero rsv[0..2]; later ones read rsv[0] as the
    clockid, 0 = CLOCK_REALTIME: zero works with both."""
    ext = PtpSysOffsetExtended.from_buffer_copy(phc.extended_request(9))
    assert ext.n_samples == 9 and ext.clockid == 0 and list(ext.rsv) == [0, 0]
    sys = PtpSysOffset.from_buffer_copy(phc.sys_offset_request(7))
    assert sys.n_samples == 7 and list(sys.rsv) == [0, 0, 0]


def _kernel_extended(triples: list[tuple[int, int, int]]) -> bytes:
    """A ptp_sys_offset_extended as ptp_chardev.c fills it: ts[i] = {pre_ts, ts, post_ts}."""
    s = PtpSysOffsetExtended(n_samples=len(triples))
    for i, triple in enumerate(triples):
        for j, value in enumerate(triple):
            s.ts[i][j].sec, s.ts[i][j].nsec = divmod(value, 10**9)
    return bytes(s)


def _kernel_sys_offset(times: list[int]) -> bytes:
    """A ptp_sys_offset as filled: sys, phc, sys, phc, ..., sys (2n + 1 stamps)."""
    s = PtpSysOffset(n_samples=(len(times) - 1) // 2)
    for i, value in enumerate(times):
        s.ts[i].sec, s.ts[i].nsec = divmod(value, 10**9)
    return bytes(s)


T = 1_796_000_000 * 10**9  # REALTIME ns
TAI = 37 * 10**9


def test_extended_unpacked_and_narrowest_chosen() -> None:
    triples = [(T, T + TAI + 900, T + 2000), (T + 5000, T + 5000 + TAI + 400, T + 5800),
               (T + 9000, T + 9000 + TAI + 700, T + 10500)]
    got = phc.extended_triples(_kernel_extended(triples), 3)
    assert got == triples
    r = phc.reading(phc.narrowest(got), "extended")
    assert r.phc_minus_sys_ns == TAI + 400 - 400  # phc − midpoint of (T+5000, T+5800)
    assert r.half_width_ns == 400 and r.sys_ns == T + 5400


def test_sys_offset_interleaving_unpacked() -> None:
    stamps = [T, T + TAI + 100, T + 1000, T + 1000 + TAI + 300, T + 1500]
    got = phc.sys_offset_triples(_kernel_sys_offset(stamps), 2)
    assert got == [(T, T + TAI + 100, T + 1000), (T + 1000, T + 1000 + TAI + 300, T + 1500)]
    assert phc.narrowest(got) == got[1]


def test_backward_triples_ignored_and_negative_seconds() -> None:
    step = [(T + 100, T, T), (T, T + 50, T + 300)]  # the first ran backwards (REALTIME step)
    assert phc.narrowest(step) == step[1]
    with pytest.raises(PhcError, match="straddled a step"):
        phc.narrowest([(T + 100, T, T)])
    assert phc.ns(-1, 500_000_000) == -1_500_000_000  # the sign applies to the whole value
    assert phc.ns(2, 5) == 2_000_000_005


class FakeKernel:
    """open/ioctl/clock_gettime as a PHC driver without gettimex64 would answer them."""

    def __init__(self, extended: int | None = errno.EOPNOTSUPP,
                 sys_offset: int | None = None, gettime: int | None = None) -> None:
        self.errors = {phc.PTP_SYS_OFFSET_EXTENDED: extended, phc.PTP_SYS_OFFSET: sys_offset}
        self.gettime_error = gettime
        self.opened: list[tuple[str, int]] = []
        self.calls: list[int] = []

    def open(self, path: str, flags: int) -> int:
        self.opened.append((path, flags))
        return os.open(os.devnull, os.O_RDONLY)

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        self.calls.append(request)
        if self.errors.get(request) is not None:
            raise OSError(self.errors[request], os.strerror(self.errors[request]))
        if request == phc.PTP_SYS_OFFSET:
            n = PtpSysOffset.from_buffer(buf).n_samples
            stamps = []
            for i in range(n):
                stamps += [T + 1000 * i, T + 1000 * i + TAI + 200]
            buf[:] = _kernel_sys_offset([*stamps, T + 1000 * n - 10])  # last sample narrow
        return 0

    def gettime(self, clockid: int) -> int:
        if clockid != time.CLOCK_REALTIME:
            self.calls.append(clockid)
            if self.gettime_error is not None:
                raise OSError(self.gettime_error, os.strerror(self.gettime_error))
            return T + TAI
        return T


def test_falls_back_to_sys_offset_then_remembers_it() -> None:
    k = FakeKernel()
    r = PhcReader("/dev/ptp0", samples=4, open_fn=k.open, ioctl=k.ioctl, gettime=k.gettime)
    got = r.read()
    assert got.method == "sys_offset"
    assert k.opened == [("/dev/ptp0", os.O_RDONLY | os.O_CLOEXEC)]  # read-only, never rw
    assert got.phc_minus_sys_ns == TAI + 200 - 495 and got.half_width_ns == 495
    r.read()
    assert k.calls == [phc.PTP_SYS_OFFSET_EXTENDED, phc.PTP_SYS_OFFSET, phc.PTP_SYS_OFFSET]
    r.close()


def test_falls_back_to_clock_gettime_on_the_descriptor() -> None:
    k = FakeKernel(sys_offset=errno.ENOTTY)
    r = PhcReader("/dev/ptp0", samples=3, open_fn=k.open, ioctl=k.ioctl, gettime=k.gettime)
    got = r.read()
    assert got.method == "clock_gettime" and got.phc_minus_sys_ns == TAI
    assert r.fd is not None and k.calls[2:] == [phc.fd_to_clockid(r.fd)] * 3
    r.close()


def test_read_error_closes_and_names_the_key() -> None:
    k = FakeKernel(extended=errno.ENODEV)
    r = PhcReader("/dev/ptp0", open_fn=k.open, ioctl=k.ioctl, gettime=k.gettime)
    with pytest.raises(PhcError, match=r"cannot read /dev/ptp0 \(ptp.phc_device\)") as exc:
        r.read()
    assert exc.value.key == "phc-read" and r.fd is None  # reopened on the next poll


@pytest.mark.parametrize("error, key, words", [
    (FileNotFoundError(errno.ENOENT, "x"), "phc-missing", "no PHC device /dev/ptp0"),
    (PermissionError(errno.EACCES, "x"), "phc-perm", "mode 0640"),
    (OSError(errno.EIO, "Input/output error"), "phc-open", "Input/output error"),
])
def test_open_errors_say_what_to_do(error: OSError, key: str, words: str) -> None:
    def failing(path: str, flags: int) -> int:
        raise error
    with pytest.raises(PhcError) as exc:
        PhcReader("/dev/ptp0", open_fn=failing).read()
    assert exc.value.key == key and words in str(exc.value)
    assert "(ptp.phc_device)" in str(exc.value)


def test_real_kernel_non_phc_descriptor_exhausts_every_way(monkeypatch: Any) -> None:
    """On this machine's kernel: /dev/null opened read-only answers both ioctls ENOTTY and
    clock_gettime on its clock id EINVAL; the reader says none works."""
    opened: list[int] = []

    def spy(path: str, flags: int) -> int:
        opened.append(flags)
        return os.open(path, flags)
    r = PhcReader(os.devnull, open_fn=spy)
    with pytest.raises(PhcError, match="supports none of") as exc:
        r.read()
    assert exc.value.key == "phc-unsupported"
    assert opened and opened[0] & os.O_ACCMODE == os.O_RDONLY
    r.close()


def test_real_kernel_interface_lookup() -> None:
    assert phc.interface_phc("lo") == -1  # ETHTOOL_GET_TS_INFO: loopback has no PHC
    with pytest.raises(PhcError, match="does not have a PHC") as exc:
        PhcReader("lo").read()
    assert exc.value.key == "phc-none"
    with pytest.raises(PhcError, match="no network interface 'nosuch0'"):
        PhcReader("nosuch0").read()


def test_clock_realtime_reads_zero_within_its_width() -> None:
    got = PhcReader("CLOCK_REALTIME").read()
    assert got.method == "realtime" and abs(got.phc_minus_sys_ns) <= got.half_width_ns + 1
    assert 0 <= got.half_width_ns < 1e6
