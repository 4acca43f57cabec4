"""Self-tests of the clock rig (tests/rig): the shim's arithmetic against the control file,
no torn reads, timed waits not distorted, set-clock attempts refused, the host clock untouched.

The probe program (tests/rig/probe.py) runs under the shim and pairs each shimmed reading
with the real clock read through the raw system call, which the shim cannot intercept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rig.harness import (
    NS,
    SETPRIV,
    STA_INS,
    STA_UNSYNC,
    ClockControl,
    Rig,
    build_shim,
    real_now,
)
from support import host_clock_discipline

PROBE = Path(__file__).resolve().parent / "rig" / "probe.py"
STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the rig needs gcc")
ADJTIME_SLACK_NS = 20_000  # a probe line's real reads bracket its fake read within this


@pytest.fixture
def shim(tmp_path: Path) -> tuple[Path, ClockControl]:
    so = build_shim(tmp_path)
    ctl = ClockControl(tmp_path / "clock.ctl")
    yield so, ctl
    ctl.close()


def probe(so: Path, ctl: ClockControl, *args: str, drop_caps: bool = False,
          prefix: list[str] | None = None) -> tuple[object, str]:
    cmd = [sys.executable, str(PROBE), *args]
    if drop_caps and os.geteuid() == 0 and SETPRIV:
        cmd = [SETPRIV, "--inh-caps=-sys_time", "--bounding-set=-sys_time", "--", *cmd]
    env = {**os.environ, "LD_PRELOAD": str(so), "CLOCKSHIM_CTL": str(ctl.path)}
    r = subprocess.run([*(prefix or []), *cmd], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_build_is_quick_and_cached(tmp_path: Path) -> None:
    a = build_shim(tmp_path)
    assert a.exists() and build_shim(tmp_path) == a
    assert [p.name for p in tmp_path.iterdir()] == [a.name]  # gcc's scratch is gone too


def test_shim_arithmetic_matches_the_control_file(shim) -> None:
    so, ctl = shim
    ctl.set(offset_s=0.05, freq_ppm=20.0)
    ctl.slew(rate_ppm=-500.0, duration_s=30.0)
    rows, _ = probe(so, ctl, "clocks", "200")
    p = ctl.params
    for row in rows:
        before, fake, after = row["REALTIME"]
        assert p.d(before) - ADJTIME_SLACK_NS <= fake - before <= p.d(after) + (after - before)
        rb, rf, ra = row["MONOTONIC_RAW"]
        assert p.fake_raw(rb) <= rf <= p.fake_raw(ra)
        for name in ("REALTIME", "REALTIME_COARSE", "TAI"):
            b, f, a = row[name]
            # coarse clocks tick every few ms: within one tick of the modelled value
            slack = 5_000_000 if "COARSE" in name else ADJTIME_SLACK_NS
            assert abs((f - b) - p.d_noleap(b)) < slack + (a - b), (name, f - b, p.d(b))
        b, f, a = row["time_ns"]
        assert p.d(b) - ADJTIME_SLACK_NS <= f - b <= p.d(a) + (a - b)
        # MONOTONIC follows RAW's rate and carries the slew, never the offset
        mb, mf, _ = row["MONOTONIC"]
        raw_shift = p.fake_raw(row["RAW_AT"]) - row["RAW_AT"]
        assert abs((mf - mb) - raw_shift - p.slews(row["REALTIME_AT"])) < 5_000_000
    # 50 ms offset visible; the slew has only just begun
    assert 0.049 < (rows[0]["REALTIME"][1] - rows[0]["REALTIME"][0]) / NS < 0.051


def test_step_leap_and_reboot_shapes(shim) -> None:
    so, ctl = shim
    ctl.step(2.0)
    rows, _ = probe(so, ctl, "clocks", "3")
    b, f, _ = rows[0]["REALTIME"]
    assert abs((f - b) / NS - 2.0) < 1e-4
    mb, mf, _ = rows[0]["MONOTONIC_RAW"]
    assert abs(mf - mb) < 1e5  # a REALTIME step leaves the oscillator alone
    ctl.leap_at(real_now()[0] - 1)  # the leap already happened: 1 s back, TAI unchanged
    rows, _ = probe(so, ctl, "clocks", "3")
    b, f, _ = rows[0]["REALTIME"]
    assert abs((f - b) / NS - 1.0) < 1e-3
    tb, tf, _ = rows[0]["TAI"]
    assert abs((tf - tb) / NS - 2.0) < 1e-3
    ctl.reboot(raw_start_s=3.0, jump_s=0.8)
    rows, _ = probe(so, ctl, "clocks", "3")
    assert 3.0 <= rows[0]["MONOTONIC_RAW"][1] / NS < 13.0  # a young boot
    assert 0 < rows[0]["BOOTTIME"][1] / NS < 60.0


def test_seqlock_no_torn_reads(shim) -> None:
    """While the harness flips between two consistent models, every reading is one of them."""
    so, ctl = shim
    stop = threading.Event()
    offsets = (7 * NS, -3 * NS)

    def flip() -> None:
        i = 0
        while not stop.is_set():
            ctl.params.offset_ns = offsets[i % 2]
            ctl.params.real_base_ns = 1_000 * (i % 2)  # with freq 0: does not change D
            ctl.write()
            i += 1

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        rows, _ = probe(so, ctl, "clocks", "5000")
    finally:
        stop.set()
        t.join()
    torn = 0
    for row in rows:
        b, f, a = row["REALTIME"]
        if not any(o - 1000 <= f - b <= o + (a - b) + 1000 for o in offsets):
            torn += 1
    assert torn == 0, f"{torn} torn of {len(rows)}"


@pytest.mark.parametrize("offset_s", [-2.0, 2.0])
def test_timed_waits_are_not_distorted(shim, offset_s: float) -> None:
    """CPython turns timeouts into absolute MONOTONIC deadlines; the shim translates them,
    also for a CLOCK_MONOTONIC condition variable (the GIL's: read as REALTIME, a shimmed
    daemon whose REALTIME ran ahead spun on the GIL, benchmarks/bench_fleet.py's CPU)."""
    so, ctl = shim
    ctl.reboot(raw_start_s=1000.0 + offset_s)  # fake MONOTONIC far from the real one
    ctl.set(freq_ppm=50.0)
    res, _ = probe(so, ctl, "wait", "0.2")
    for kind, took in res.items():
        assert 0.19 < took < 0.6, (kind, took)


def test_kernel_state_is_what_the_control_file_says(shim) -> None:
    so, ctl = shim
    ctl.kernel(0, 0, status=0)  # timesyncd-like: synchronized, maxerror 0
    res, _ = probe(so, ctl, "timex")
    for fn in ("adjtimex", "__adjtimex", "ntp_adjtime"):
        assert res[fn][:4] == [0, 0, 0, 0], fn
    ctl.kernel(16_000_000, status=STA_UNSYNC | STA_INS)
    res, _ = probe(so, ctl, "timex")
    assert res["adjtimex"][1] == 16_000_000 and res["adjtimex"][3] == STA_UNSYNC | STA_INS
    assert res["clock_adjtime"][1:] == [16_000_000, STA_UNSYNC | STA_INS]


def test_setting_the_clock_is_refused_and_never_reaches_the_kernel(shim) -> None:
    so, ctl = shim
    before = host_clock_discipline()
    prefix = [STRACE, "-f", "-qq", "-e", "trace=clock_settime,settimeofday,adjtimex,"
              "clock_adjtime", "-o", str(ctl.path.with_suffix(".strace"))] if STRACE else []
    res, _ = probe(so, ctl, "set", drop_caps=True, prefix=prefix)
    for fn, (rc, err) in res.items():
        assert rc == -1 and err == 1, (fn, rc, err)  # EPERM
    if STRACE:
        trace = ctl.path.with_suffix(".strace").read_text()
        assert "settime" not in trace and "adjtime" not in trace, trace
    assert host_clock_discipline() == before


def test_a_rig_daemon_runs_shimmed_without_cap_sys_time(chronyd) -> None:
    """The daemon sees the rig's clock; the harness does not; CAP_SYS_TIME is gone."""
    before = host_clock_discipline()
    with Rig() as rig:
        d = rig.daemon("one", [chronyd.server])
        d.clock.set(offset_s=1.5)
        s = d.query()
        assert abs((s.system_ns - s.recv_ns) / NS - 1.5) < 0.1
        assert abs(real_now()[0] - s.recv_ns) < NS  # the harness's own clock is untouched
        env = Path(f"/proc/{d.proc.pid}/environ").read_bytes()
        assert b"LD_PRELOAD=" in env
        if os.geteuid() == 0 and SETPRIV:
            status = Path(f"/proc/{d.proc.pid}/status").read_text()
            cap_eff = int(next(line.split()[1] for line in status.splitlines()
                               if line.startswith("CapEff")), 16)
            assert not cap_eff & (1 << 25)  # CAP_SYS_TIME
        assert "LD_PRELOAD" not in os.environ
    assert host_clock_discipline() == before


def test_leap_lands_at_the_fake_midnight_with_hours_of_offset(tmp_path: Path) -> None:
    """Scenario d sets the daemon's clock up to a day off (a UTC midnight a few seconds
    ahead) and 10 ppm fast: the kernel's insert must happen where the FAKE clock reads the
    midnight, i.e. r + D(r) = midnight exactly, not one D-evaluation away (1.6 s off here)."""
    ctl = ClockControl(tmp_path / "ctl")
    try:
        ctl.set(offset_s=80_000.0, freq_ppm=20.0)
        midnight = (real_now()[0] // (86400 * NS) + 2) * 86400 * NS
        ctl.leap_at(midnight)
        r = ctl.params.leap_at_ns
        assert abs(r + ctl.params.d_noleap(r) - midnight) < 1_000  # ns
    finally:
        ctl.close()


def test_truth_across_a_played_leap(tmp_path: Path) -> None:
    """The rig's true UTC: the harness clock shifted to a close midnight, 1 s less from the
    leap's real instant on (POSIX 23:59:59 shown twice); the responder serves the same."""
    with Rig(tmp_path) as rig:
        ref = rig.leap_responder(5.0)
        L, S = rig.leap_ns, rig.utc_shift_ns
        assert (L + S) % (86400 * NS) == 0 and 0 < S <= 86400 * NS
        assert rig.leap_utc_ns == L + S
        assert rig.truth_ns(L - 1) == L + S - 1
        assert rig.truth_ns(L) == L + S - NS  # the second is repeated
        assert ref.leap == 1 and abs(ref.shift - S / NS) < 1e-6
