"""PtpSource logic with recorded pmc outputs played back and a fake PHC (no ptp4l needed)."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest

from chronotickd.core.measurement import Measurement
from chronotickd.sources.phc import PhcError, PhcReading
from chronotickd.sources.ptp import PHC_READ_FLOOR_S, RECOVER_SYNCS, PtpSettings, PtpSource
from chronotickd.sources.ptp_quality import GmPolicy

DATA = Path(__file__).parent / "data" / "ptp"
LIVE = (DATA / "slave_uncalibrated.txt").read_text()
DEAD = (DATA / "slave_master_dead_listening.txt").read_text()
T0 = 1_795_531_453.0  # system time of the recording


def with_values(text: str, ingress_ns: int, offset_ns: int = -252, state: str | None = None,
                timescale: int | None = None) -> str:
    text = re.sub(r"(ingress_time\s+)\d+", rf"\g<1>{ingress_ns}", text)
    text = re.sub(r"(master_offset\s+)-?\d+", rf"\g<1>{offset_ns}", text)
    if state:
        text = re.sub(r"(portState\s+)\S+", rf"\g<1>{state}", text)
    if timescale is not None:
        text = re.sub(r"(ptpTimescale\s+)\d", rf"\g<1>{timescale}", text)
    return text


class Fake:
    """Clock + runner: each pmc call returns ``self.pmc_out``."""

    def __init__(self) -> None:
        self.now = T0
        self.pmc_out: str | Exception = ""
        self.calls: list[list[str]] = []
        self.got: list[Measurement] = []

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        self.calls.append(argv)
        out = self.pmc_out
        if isinstance(out, Exception):
            raise out
        return 0, out

    def source(self, **settings: object) -> PtpSource:
        # the recording's grandmaster is ptp4l's default (class 248, not traceable, accuracy
        # unknown); tests of other rules price that at 0 unless they pass their own policy
        settings.setdefault("gm_policy", GmPolicy(0.0, 0.0, 0.0))
        return PtpSource(PtpSettings(uds="/tmp/ptp-test", **settings),  # type: ignore[arg-type]
                         self.got.append, runner=self.run, clock=lambda: self.now,
                         monotonic=lambda: self.now, exists=lambda p: False)

    def sync(self, src: PtpSource, offset_ns: int = -252, **kw: object) -> Measurement | None:
        """Advance one second with a Sync received 0.2 s ago; poll."""
        self.now += 1.0
        self.pmc_out = with_values(LIVE, int((self.now - 0.2) * 1e9), offset_ns, **kw)
        return src.poll_once()


def test_software_timestamping_sign_and_time() -> None:
    f = Fake()
    src = f.source()
    m = f.sync(src, offset_ns=-252)
    assert m is not None
    assert m.kind == "ptp" and m.source == "ptp:/tmp/ptp-test"
    assert m.offset == pytest.approx(252e-9)  # reference − system = −(own − master)
    assert m.t == pytest.approx(f.now - 0.2)  # the Sync's ingress time
    assert m.delay == pytest.approx(1294e-9)  # meanPathDelay
    assert f.calls[0][:6] == ["pmc", "-u", "-b", "0", "-s", "/tmp/ptp-test"]
    assert "GET TIME_STATUS_NP" in f.calls[0] and "GET PARENT_DATA_SET" in f.calls[0]


def test_bound_uses_path_delay_accuracy_and_spread() -> None:
    f = Fake()
    src = f.source(gm_policy=GmPolicy(unknown_accuracy_s=2e-6, untraceable_accuracy_s=0.0))
    first = f.sync(src)
    assert first is not None
    # prior spread until 4 offsets are known: delay + unknown-accuracy + 3 × 10 µs
    assert first.bound == pytest.approx(1294e-9 + 2e-6 + 30e-6)
    for off in (-240, -260, -250, -255, -245, -252, -248):
        m = f.sync(src, offset_ns=off)
    assert m is not None
    assert 1294e-9 + 2e-6 < m.bound < 1294e-9 + 2e-6 + 1e-6  # a few ns of spread now
    assert src.health() == {"ptp:/tmp/ptp-test": None}
    assert src.state == "ok"


def test_needs_consecutive_syncs_before_usable() -> None:
    f = Fake()
    src = f.source()
    for i in range(RECOVER_SYNCS - 1):
        f.sync(src)
        reason = src.health()[src.name]
        assert reason is not None and f"({i + 1}/{RECOVER_SYNCS})" in reason
    f.sync(src)
    assert src.health()[src.name] is None


def test_same_ingress_is_not_fed_twice() -> None:
    f = Fake()
    src = f.source()
    assert f.sync(src) is not None
    f.now += 0.5
    assert src.poll_once() is None
    assert len(f.got) == 1


def test_stale_ingress_marks_unusable_before_port_changes(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    f = Fake()
    src = f.source()
    for _ in range(4):
        f.sync(src)
    assert src.state == "ok"
    caplog.set_level(logging.WARNING, "chronotickd.ptp")
    for _ in range(4):  # master killed: same ingress, port still UNCALIBRATED
        f.now += 1.0
        src.poll_once()
    assert src.state == "unusable"
    assert "master silent" in src.reason
    f.pmc_out = DEAD
    for _ in range(3):
        f.now += 1.0
        assert src.poll_once() is None
    assert "LISTENING" in (src.health()[src.name] or "")
    lines = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(lines) == 2  # one line per problem, not one per poll
    assert len(f.got) == 4  # nothing fed while dead
    # master back: usable after RECOVER_SYNCS fresh Syncs
    for _ in range(RECOVER_SYNCS):
        f.sync(src)
    assert src.state == "ok"


@pytest.mark.parametrize("exc, words", [
    (FileNotFoundError(2, "No such file"), "pmc not found"),
    (PermissionError(13, "Permission denied"), "permission denied executing"),
    (subprocess.TimeoutExpired("pmc", 1.0), "no answer within"),
])
def test_pmc_execution_errors(exc: Exception, words: str,
                              caplog: pytest.LogCaptureFixture) -> None:
    f = Fake()
    src = f.source()
    f.pmc_out = exc
    caplog.set_level(logging.WARNING, "chronotickd.ptp")
    for _ in range(3):
        f.now += 1
        assert src.poll_once() is None
    assert words in (src.health()[src.name] or "")
    assert len(caplog.records) == 1


@pytest.mark.parametrize("fixture, words", [
    ("no_ptp4l.txt", "ptp4l not running: no management socket"),
    ("perm_denied.txt", "permission denied"),
    ("master.txt", "port MASTER"),
    ("malformed_offset.txt", "unexpected pmc output"),
    ("malformed_truncated.txt", "lacks"),
])
def test_pmc_output_problems(fixture: str, words: str) -> None:
    f = Fake()
    src = f.source()
    f.pmc_out = (DATA / fixture).read_text()
    assert src.poll_once() is None
    assert words in (src.health()[src.name] or "")
    assert src.describe()[0]["state"] == "unusable"


class FakePhc:
    """A PHC reader: PHC − system as given, or the error to raise."""

    def __init__(self, minus_sys_ns: float = 0.0, half_width_ns: float = 0.0) -> None:
        self.minus_sys_ns, self.half_width_ns = minus_sys_ns, half_width_ns
        self.error: Exception | None = None
        self.reads = 0

    def read(self) -> PhcReading:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return PhcReading(self.minus_sys_ns, self.half_width_ns, 0, "extended")

    def close(self) -> None:
        pass


def test_phc_combination_and_tai_shift() -> None:
    f = Fake()
    # PHC runs TAI: 37 s + 1 µs ahead of the system clock, read within ±200 ns
    phc = FakePhc(37_000_001_000, 200)
    src = f.source(phc_device="/dev/ptp0")
    src.phc = phc  # type: ignore[assignment]
    f.now += 1.0
    ingress = int((f.now + 37.000001 - 0.3) * 1e9)  # in PHC time
    f.pmc_out = with_values(LIVE, ingress, offset_ns=400, timescale=1)
    m = src.poll_once()
    assert m is not None and phc.reads == 1
    # reference − system = (PHC − system) − (PHC − master) − UTC offset = 1 µs − 400 ns
    assert m.offset == pytest.approx(600e-9, abs=1e-12)
    assert m.t == pytest.approx(f.now)
    assert all("phc_ctl" not in argv[0] for argv in f.calls)  # no subprocess for the PHC
    # bound: + the reading's half width and its floor + 0.3 s × 100 ppm extrapolation
    assert m.bound == pytest.approx(1294e-9 + 30e-6 + 200e-9 + PHC_READ_FLOOR_S
                                    + 0.3 * 100e-6, rel=1e-3)


@pytest.mark.parametrize("key", ["phc-missing", "phc-perm", "phc-none"])
def test_phc_errors_mark_unusable(key: str, caplog: pytest.LogCaptureFixture) -> None:
    f = Fake()
    src = f.source(phc_device="/dev/ptp0")
    phc = FakePhc()
    phc.error = PhcError(key, f"{key} for /dev/ptp0 (ptp.phc_device)")
    src.phc = phc  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, "chronotickd.ptp"):
        for _ in range(3):
            assert f.sync(src) is None
    assert "ptp.phc_device" in (src.health()[src.name] or "")
    assert [r.getMessage() for r in caplog.records].count(
        f"PTP source {src.name} unusable: {key} for /dev/ptp0 (ptp.phc_device)") == 1


def test_default_untraceable_grandmaster_costs_a_second() -> None:
    """ptp4l's defaults (class 248, timeTraceable 0, accuracy 0xFE) are not a UTC reference:
    the measurement's bound carries the untraceable allowance and `sources` says why."""
    f = Fake()
    src = f.source(gm_policy=GmPolicy())  # the shipped defaults
    m = f.sync(src)
    assert m is not None and m.bound > 1.0
    row = src.describe()[0]
    assert row["gm_trust"] == "untraceable" and "not traceable" in row["gm_note"]


def test_traceable_grandmaster_is_priced_by_its_accuracy() -> None:
    f = Fake()
    src = f.source(gm_policy=GmPolicy())
    traceable = (LIVE.replace("gm.ClockClass                         248",
                              "gm.ClockClass                         6")
                 .replace("gm.ClockAccuracy                      0xfe",
                          "gm.ClockAccuracy                      0x21")
                 .replace("timeTraceable         0", "timeTraceable         1"))
    f.now += 1.0
    f.pmc_out = with_values(traceable, int((f.now - 0.2) * 1e9))
    m = src.poll_once()
    assert m is not None
    assert m.bound == pytest.approx(1294e-9 + 100e-9 + 30e-6)  # delay + 0x21 (100 ns) + prior
    assert src.describe()[0]["gm_trust"] == "traceable"
