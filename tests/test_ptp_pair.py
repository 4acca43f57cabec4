"""The PTP source against a real ptp4l pair in network namespaces (free-running client)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from ptp_support import PtpPair, ptp_pair, ptp_skip_reason

from chronotickd.core.measurement import Measurement
from chronotickd.sources import clocks
from chronotickd.sources.ptp import PtpSettings, PtpSource

pytestmark = [pytest.mark.root, pytest.mark.slow]

_skip = ptp_skip_reason()


@pytest.fixture(scope="module")
def pair() -> Iterator[PtpPair]:
    if _skip:
        pytest.skip(_skip)
    with ptp_pair() as p:
        yield p


def poll_until(src: PtpSource, cond: Callable[[], bool], timeout: float,
               every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        src.poll_once()
        if cond():
            return True
        time.sleep(every)
    return False


def test_source_reads_the_pair_then_detects_the_dead_master(pair: PtpPair) -> None:
    got: list[Measurement] = []
    src = PtpSource(PtpSettings(uds=pair.uds_client, poll_interval_s=0.5), got.append)
    assert poll_until(src, lambda: src.state == "ok", 20), src.reason
    m = got[-1]
    assert m.kind == "ptp" and m.source == f"ptp:{pair.uds_client}"
    # both ends timestamp with the same system clock: the true offset is ~0
    assert abs(m.offset - clocks.read().delta(src.epoch)) < 100e-6  # θ = δ + −master_offset
    assert 0 < m.delay < 1e-3
    assert m.bound < 1e-3
    row = src.describe()[0]
    assert row["port_state"] == "UNCALIBRATED" and row["gm_identity"]
    assert src.health() == {src.name: None}

    pair.kill_master()
    fed = len(got)
    killed = time.monotonic()
    assert poll_until(src, lambda: src.state == "unusable", 10), src.reason
    detect = time.monotonic() - killed
    print(f"\nPTP source: master killed → unusable after {detect:.1f} s ({src.reason})")
    assert "master silent" in src.reason or "LISTENING" in src.reason
    assert poll_until(src, lambda: "LISTENING" in src.reason, 15), src.reason
    assert len(got) <= fed + 1  # at most a Sync already in flight, nothing after
    assert src.health()[src.name] == src.reason

    pair.start_master()
    assert poll_until(src, lambda: src.state == "ok", 40), src.reason
    assert abs(got[-1].offset - clocks.read().delta(src.epoch)) < 100e-6


def test_leap61_from_a_real_master_reaches_the_measurement(pair: PtpPair) -> None:
    """The master announces an inserted leap second (leap61): the client's pmc shows it and
    the source's measurements carry it as leap indicator 1 (the engine schedules the leap
    from that, chronotickd/core/engine.py)."""
    got: list[Measurement] = []
    src = PtpSource(PtpSettings(uds=pair.uds_client, poll_interval_s=0.5), got.append)
    pair.announce_traceable(leap61=1)
    try:
        assert poll_until(src, lambda: bool(got) and got[-1].leap == 1, 30), (
            src.reason, pair.client_pmc("GET TIME_PROPERTIES_DATA_SET"))
        assert src.status is not None and src.status.leap61 is True
        assert src.status.current_utc_offset_s == 37 and src.status.utc_offset_valid is True
    finally:
        pair.announce_traceable()  # the pair is shared: no leap for the next test


def test_master_port_and_missing_ptp4l_are_unusable(pair: PtpPair) -> None:
    src = PtpSource(PtpSettings(uds=pair.uds_master), lambda m: None)
    src.poll_once()
    reason = src.health()[src.name] or ""
    assert "not following a master" in reason or "LISTENING" in reason
    gone = PtpSource(PtpSettings(uds=str(pair.workdir / "nothing-here")), lambda m: None)
    gone.poll_once()
    assert "ptp4l not running" in (gone.health()[gone.name] or "")


def test_phc_path_with_clock_realtime(pair: PtpPair) -> None:
    """phc_ctl CLOCK_REALTIME cmp exercises the PHC combination (PHC = system clock here)."""
    got: list[Measurement] = []
    src = PtpSource(PtpSettings(uds=pair.uds_client, phc_device="CLOCK_REALTIME",
                                poll_interval_s=0.5), got.append)
    assert poll_until(src, lambda: len(got) >= 3, 30), src.reason
    assert all(abs(m.offset - clocks.read().delta(src.epoch)) < 200e-6 for m in got)
    assert all(m.bound < 1e-3 for m in got)


def test_untraceable_grandmaster_is_priced_then_trusted_once_traceable(pair: PtpPair) -> None:
    """ptp4l's default announce (class 248, not traceable) costs the untraceable allowance;
    the same master announcing GNSS lock (class 6, traceable) is priced by its accuracy."""
    got: list[Measurement] = []
    src = PtpSource(PtpSettings(uds=pair.uds_client, poll_interval_s=0.5), got.append)
    try:
        pair.announce_traceable(False)
        assert poll_until(src, lambda: bool(got) and got[-1].bound > 1.0, 20), src.describe()
        assert src.describe()[0]["gm_trust"] == "untraceable"
    finally:
        pair.announce_traceable(True)
    assert poll_until(src, lambda: got[-1].bound < 1e-3, 20), src.describe()
    assert src.describe()[0]["gm_trust"] == "traceable"
