"""Shared-memory read path (issue 15): ChronoTick's segment, the ClockBound v2 segment, the
Python and C readers, torn reads, and agreement with the socket on a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import PYTHONPATH, REPO, cli, daemon_process, kill_pid, wait_for

from chronotick_client import Client
from chronotick_client import shm as layout
from chronotick_client.shm import ShmReader, ShmUnavailable, compute
from chronotickd import shm
from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.measurement import Measurement

GCC = shutil.which("gcc")
EPOCH = 1_700_000_000 * 10**9
BOOT = b"b" * 16


def engine_state(now: float, offset: float = 0.001, freq: float = 2e-6, n: int = 20):
    """A synced engine state on the (pre-TIME-BASE) REALTIME axis."""
    e = Engine(EngineConfig())
    for i in range(n):
        t = now - n + i
        e.add(Measurement(t, offset + freq * (t - now), 1e-4, 5e-5, "srv", "ntp"))
    return e.snapshot(now)


def reading(real_ns: int, raw_ns: int, width_ns: int = 0) -> shm.ClockReading:
    return shm.ClockReading(real_ns, raw_ns, width_ns, raw_ns)


# -- the adapter and the reader's arithmetic ------------------------------------------------
def test_segment_reproduces_the_daemons_answer() -> None:
    """Written at one reading and read back later, the segment gives ClockState.answer."""
    raw_w = 5_000 * 10**9
    real_w = EPOCH + raw_w + 123_456_789  # δ = 0.123 s
    st = engine_state(real_w / 1e9)
    p = shm.segment_params(st, reading(real_w, raw_w), EPOCH, 0.0, 0, BOOT)
    for later in (0, 10**9, 4 * 10**9):  # within 5 write intervals (then: freerunning)
        got = compute(p, real_w + later, raw_w + later, 0, BOOT)
        want = st.answer((real_w + later) / 1e9)
        assert got[0] == pytest.approx(want[0], abs=2e-9)
        assert got[1] == pytest.approx(want[1], rel=1e-9)
        assert (got[2], got[3]) == (str(want[2]), want[3])
        assert got[4] == pytest.approx(want[4], abs=1e-6)


def test_kernel_rate_is_folded_into_the_raw_axis() -> None:
    """REALTIME running 50 ppm fast against RAW: the RAW-axis fit still predicts the same
    offset vs REALTIME as the REALTIME-axis fit, at the write and 10 s later."""
    rate = 50e-6
    raw_w = 9_000 * 10**9
    real_w = EPOCH + raw_w
    st = engine_state(real_w / 1e9)
    p = shm.segment_params(st, reading(real_w, raw_w), EPOCH, rate, 0, BOOT)
    for later_raw in (0, 10 * 10**9):
        real = real_w + round(later_raw * (1 + rate))
        got = compute(p, real, raw_w + later_raw, 0, BOOT)
        assert got[0] == pytest.approx(st.answer(real / 1e9)[0], abs=5e-9)


def test_time_base_state_is_copied_onto_the_raw_axis() -> None:
    """A ClockState of the TIME BASE engine (``epoch``, fit against MONOTONIC_RAW) is written
    as is; the reader answers θ(raw) − δ, whatever REALTIME did."""
    from types import SimpleNamespace

    from chronotickd.core.estimator import LineFit

    raw_w = 7_000 * 10**9
    fit = LineFit(t_ref=6_990.0, offset_ref=0.002, freq=1e-6, var_offset=1e-12, var_freq=1e-16,
                  sigma=1e-6, systematic=4e-5, n=16, t_first=6_900.0, t_last=6_999.5)
    state = SimpleNamespace(fit=fit, epoch=EPOCH // 10**9, confidence_k=3.0, max_drift=1e-6,
                            unsync_bound=16.0, stale_after=64.0, void_after_s=3600.0,
                            restored=False, source="srv")
    real_w = EPOCH + raw_w + 40_000_000  # δ = 40 ms at the write
    p = shm.segment_params(state, reading(real_w, raw_w), 0, 0.0, 0, BOOT)
    assert (p.epoch_ns, p.t_ref_ns, p.t_last_ns) == (EPOCH, 6_990 * 10**9, 6_999_500_000_000)
    raw = raw_w + 10**9
    real = EPOCH + raw + 40_000_100  # REALTIME slewed by 100 ns since
    off, bound, status, source, as_of, _ = compute(p, real, raw, 0, BOOT)
    assert off == pytest.approx(0.002 + 1e-6 * 11.0 - 0.0400001, abs=1e-12)
    assert status == "synchronized" and source == "srv"
    assert bound == pytest.approx(4e-5 + 3.0 * (1e-12 + 1e-16 * 121.0) ** 0.5 + 1e-6 * 1.5)
    assert as_of == pytest.approx((EPOCH + 6_999_500_000_000 + 40_000_100) / 1e9)


def test_unsynchronized_and_void_states() -> None:
    raw_w = 10**12
    real_w = EPOCH + raw_w
    st = Engine(EngineConfig()).snapshot(real_w / 1e9, 16.0)
    p = shm.segment_params(st, reading(real_w, raw_w), EPOCH, 0.0, 0, BOOT)
    off, bound, status, source, as_of, _ = compute(p, real_w, raw_w, 0, BOOT)
    assert (off, bound, status, source, as_of) == (0.0, 16.0, "unsynchronized", "system", 0.0)
    synced = engine_state(real_w / 1e9)
    p = shm.segment_params(synced, reading(real_w, raw_w), EPOCH, 0.0, 0, BOOT)
    late = 3601 * 10**9  # past void_after (3600 s after the last measurement)
    assert compute(p, real_w + late, raw_w + late, 0, BOOT)[2] == "unsynchronized"


def _truth_covered(p: layout.Params, truth_offset_at, real: int, raw: int) -> bool:
    off, bound, *_ = compute(p, real, raw, 0, BOOT)
    return abs(off - truth_offset_at(real)) <= bound


def test_realtime_step_between_updates_never_gives_a_wrong_narrow_bound() -> None:
    """Injected clock reads: REALTIME stepped, slewed, or the machine slept between two
    daemon writes. Either the answer still covers the truth, or the reader refuses."""
    raw_w = 20_000 * 10**9
    real_w = EPOCH + raw_w
    st = engine_state(real_w / 1e9, offset=0.001, freq=0.0)
    p = shm.segment_params(st, reading(real_w, raw_w), EPOCH, 0.0, 0, BOOT)
    ref = lambda raw: EPOCH + raw + 1_000_000  # noqa: E731 - truth: reference = RAW + 1 ms
    # no step: covered
    assert _truth_covered(p, lambda real: (ref(raw_w + 10**8) - real) / 1e9,
                          real_w + 10**8, raw_w + 10**8)
    # REALTIME stepped +0.5 s (settimeofday) 0.2 s after the write: refused (could be a sleep)
    raw = raw_w + 2 * 10**8
    with pytest.raises(ShmUnavailable, match="stepped"):
        compute(p, real_w + 2 * 10**8 + 5 * 10**8, raw, 0, BOOT)
    # a step back: refused too
    with pytest.raises(ShmUnavailable, match="stepped"):
        compute(p, real_w + 2 * 10**8 - 5 * 10**8, raw, 0, BOOT)
    # suspend: RAW stood still for 30 s while real time (and REALTIME) went on
    with pytest.raises(ShmUnavailable):
        compute(p, real_w + 30 * 10**9, raw_w + 10**6, 0, BOOT)
    # a slew another daemon applies (500 ppm for 0.5 s = 250 µs): answered, truth covered —
    # the offset follows REALTIME because the fit lives on RAW
    raw = raw_w + 5 * 10**8
    real = real_w + 5 * 10**8 + 250_000
    off, bound, status, *_ = compute(p, real, raw, 0, BOOT)
    assert status == "synchronized"
    assert abs(off - (ref(raw) - real) / 1e9) <= bound
    assert off == pytest.approx(0.001 - 250e-6, abs=1e-7)


def test_stale_closed_and_foreign_segments() -> None:
    raw_w = 30_000 * 10**9
    real_w = EPOCH + raw_w
    st = engine_state(real_w / 1e9)
    p = shm.segment_params(st, reading(real_w, raw_w), EPOCH, 0.0, 0, BOOT)
    # the daemon stopped rewriting (killed): never synchronized past 5 write intervals
    later = 6 * 10**9
    assert compute(p, real_w + later, raw_w + later, 0, BOOT)[2] == "freerunning"
    with pytest.raises(ShmUnavailable, match="another boot"):
        compute(p, real_w, raw_w, 0, b"x" * 16)
    with pytest.raises(ShmUnavailable, match="closed"):
        compute(p._replace(flags=layout.FLAG_CLOSED), real_w, raw_w, 0, BOOT)
    with pytest.raises(ShmUnavailable, match="future"):
        compute(p, real_w - 5 * 10**9, raw_w - 5 * 10**9, 0, BOOT)


def test_writer_reader_round_trip_and_layout(tmp_path: Path) -> None:
    path = str(tmp_path / "shm0")
    seg = shm.ChronoTickSegment(path, 0o640)
    st = engine_state(time.time())
    r = shm.read_clocks()
    p = shm.segment_params(st, r, (r.real_ns - r.raw_ns) // 10**9 * 10**9, 0.0, 1,
                           layout.boot_id())
    seg.write(p)
    assert os.stat(path).st_mode & 0o777 == 0o640
    raw = Path(path).read_bytes()
    assert len(raw) == 256
    magic, version, _, size, _, gen = struct.unpack_from("=IHHIIQ", raw)
    assert (magic, version, size, gen) == (0x4B544843, 1, 256, 2) and raw[:4] == b"CHTK"
    with ShmReader(path) as reader:
        assert reader.snapshot() == p
        ans = reader.now()
        assert ans["status"] == "synchronized" and ans["source"] == "ntp"
        assert set(ans) == _socket_fields()
        seg.close(p)  # the daemon stops: readers are sent to the socket
        with pytest.raises(ShmUnavailable, match="closed"):
            reader.now()
    again = shm.ChronoTickSegment(path, 0o640)  # a restart reuses the file and its generation
    again.write(p)
    assert struct.unpack_from("=Q", Path(path).read_bytes(), 16)[0] == 6
    again.close(None)


def _socket_fields() -> set[str]:
    from chronotickd.wire import values_to_wire

    return set(values_to_wire(1, 0.0, 1.0, "synchronized", "x", 1.0, 2.0))


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "shm0")
    first = shm.ChronoTickSegment(path, 0o644)
    with pytest.raises(OSError, match="another chronotickd"):
        shm.ChronoTickSegment(path, 0o644)
    first.close(None)


# -- ClockBound --------------------------------------------------------------------------------
# A reader written from ClockBound's published layout (clock-bound 2.x docs/PROTOCOL.md, as
# summarized in ../shared/REFERENCE.md §6), not from chronotickd.shm.
CB_FORMAT = "=IIIHHqqqqqQIiB7x"
CB_MONO_COARSE = 6


def clockbound_read(path: str) -> dict:
    with open(path, "rb") as f:
        for _ in range(1000):
            data = f.read(80)
            f.seek(0)
            (m0, m1, size, version, gen, as_s, as_ns, va_s, va_ns, bound, _marker, drift,
             status, disruption) = struct.unpack(CB_FORMAT, data)
            data2 = f.read(80)
            f.seek(0)
            if gen % 2 == 0 and struct.unpack_from("=H", data2, 14)[0] == gen:
                break
    return dict(magic=(m0, m1), size=size, version=version, generation=gen,
                as_of=as_s * 10**9 + as_ns, void_after=va_s * 10**9 + va_ns, bound=bound,
                max_drift_ppb=drift, status=status, disruption_support=disruption,
                raw=data)


def clockbound_now(seg: dict) -> tuple[int, int, int, int]:
    """(earliest, latest, status, realtime) as a ClockBound client computes them."""
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    mono = time.clock_gettime_ns(CB_MONO_COARSE)
    grown = seg["bound"] + (max(0, mono - seg["as_of"]) * seg["max_drift_ppb"]) // 10**9
    status = seg["status"]
    if status in (1, 2) and mono >= seg["as_of"] + 5 * 10**9:
        status = 2 if mono < seg["void_after"] else 0
    return real - grown, real + grown, status, real


def test_clockbound_generation_wraps_to_two(tmp_path: Path) -> None:
    seg = shm.ClockBoundSegment(str(tmp_path / "cb"), 0o644)
    seg.gen = 0xFFFC
    seg.write(1, 2, 3, 4, 1)
    assert clockbound_read(str(tmp_path / "cb"))["generation"] == 0xFFFE
    seg.write(1, 2, 3, 4, 1)
    assert clockbound_read(str(tmp_path / "cb"))["generation"] == 2
    seg.close()


@pytest.fixture
def synced(chronyd, tmp_path: Path):
    cb = tmp_path / "clockbound" / "shm0"
    with daemon_process(tmp_path, ntp__servers=[chronyd.server],
                        shm__clockbound_path=str(cb)) as d:
        c = Client(d.socket, use_shm=False)
        wait_for(lambda: c.now()["status"] == "synchronized", 30, "synchronized")
        time.sleep(1.2)  # one more publish: the segments carry the synced state
        yield d, c, cb
        c.close()


def test_clockbound_client_view_contains_the_daemons_interval(synced) -> None:
    _d, c, cb = synced
    seg = clockbound_read(str(cb))
    assert seg["magic"] == (0x414D5A4E, 0x43420200)
    assert seg["raw"][:8] == bytes.fromhex("4e5a4d4100024243") or sys.byteorder == "big"
    assert (seg["size"], seg["version"]) == (80, 2)
    assert seg["generation"] > 0 and seg["generation"] % 2 == 0
    assert seg["status"] == 1  # Synchronized
    assert seg["void_after"] > seg["as_of"]
    for _ in range(20):
        ans = c.now()  # the daemon's own interval at its system time
        seg = clockbound_read(str(cb))
        earliest, latest, status, real = clockbound_now(seg)
        assert status == 1
        # the same instants on the REALTIME axis: shift the daemon's interval to `real`
        shift = real - ans["system_time_ns"]
        assert earliest <= ans["earliest_ns"] + shift and ans["latest_ns"] + shift <= latest, \
            (earliest, latest, ans, shift)
        time.sleep(0.05)


def test_shm_now_agrees_with_socket_now(synced) -> None:
    d, c, _ = synced
    path = str(d.workdir / "shm0")
    with ShmReader(path) as reader:
        for _ in range(20):
            a = reader.now()
            b = c.now()
            assert set(a) == set(b)
            assert a["status"] == b["status"] == "synchronized"
            assert a["source"] == b["source"]
            # at a common instant (b's system time), the two intervals overlap
            shift = b["system_time_ns"] - a["system_time_ns"]
            assert a["earliest_ns"] + shift <= b["latest_ns"]
            assert b["earliest_ns"] <= a["latest_ns"] + shift
            assert 0.5 <= a["bound_ns"] / b["bound_ns"] <= 2.0
            time.sleep(0.05)
    # the CLI: --shm answers with the socket's fields; default uses shm, --no-shm the socket
    out = cli("now", "--shm", "--json", socket_path=d.socket)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) == set(c.now())
    out = cli("now", "--no-shm", "--json", socket_path=d.socket)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "synchronized"


@pytest.mark.skipif(GCC is None, reason="gcc not installed")
def test_c_reader_agrees_with_socket(synced, tmp_path: Path) -> None:
    d, c, _ = synced
    exe = tmp_path / "chronotick_now"
    subprocess.run([GCC, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-o", str(exe),
                    str(REPO / "clients/c/chronotick_now.c"), "-lm"], check=True)
    out = subprocess.run([str(exe), str(d.workdir / "shm0")], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    a = json.loads(out.stdout)
    b = c.now()
    assert a["status"] == "synchronized" and a["source"] == b["source"]
    shift = b["system_time_ns"] - a["system_time_ns"]
    assert a["earliest_ns"] + shift <= b["latest_ns"] and b["earliest_ns"] <= a["latest_ns"] + shift
    assert 0.5 <= a["bound_ns"] / b["bound_ns"] <= 2.0


def test_stopped_daemon_sends_readers_to_the_socket(tmp_path: Path) -> None:
    with daemon_process(tmp_path, ntp__servers=[]) as d:
        c = Client(d.socket)
        assert c.now()["status"] == "unsynchronized"
    with pytest.raises(ConnectionError):
        c.now()  # segment closed → socket → no daemon
    out = cli("now", "--shm", socket_path=d.socket)
    assert out.returncode == 3 and "stopped" in out.stderr


# -- torn reads ----------------------------------------------------------------------------------
@pytest.mark.skipif(GCC is None, reason="gcc not installed")
def test_no_torn_reads_under_a_100khz_writer(tmp_path: Path) -> None:
    """The daemon's writer rewrites the segment in a loop (≥ 100 kHz) while a C and a Python
    reader in other processes check that every snapshot's fields derive from one counter."""
    seg = str(tmp_path / "shm0")
    torn_c = tmp_path / "torn_reader"
    subprocess.run([GCC, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-o", str(torn_c),
                    str(REPO / "tests/c/torn_reader.c"), "-lm"], check=True)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    writer = subprocess.Popen([sys.executable, str(REPO / "tests/shm_writer_loop.py"), seg],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        readers = [
            subprocess.Popen([str(torn_c), seg, "20000000", "3"], stdout=subprocess.PIPE,
                             text=True),
            subprocess.Popen([sys.executable, str(REPO / "tests/shm_torn_reader.py"), seg,
                              "1000000"], stdout=subprocess.PIPE, text=True, env=env),
        ]
        results = []
        for r in readers:
            out, _ = r.communicate(timeout=120)
            assert r.returncode == 0, out
            results.append(json.loads(out))
    finally:
        kill_pid(writer)
    stats = json.loads(writer.stdout.read().strip().splitlines()[-1])
    rate = stats["writes"] / stats["seconds"]
    print(f"writer {rate:.0f} writes/s; readers {results}")
    assert rate >= 100_000
    for res in results:
        assert res["reads"] >= 1_000_000 and res["torn"] == 0
        assert res["snapshots"] >= 2  # the writer really changed the segment under the reader
