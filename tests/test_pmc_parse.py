"""Parsers of pmc output, on outputs recorded from the real tools (tests/data/ptp)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from chronotickd.sources.pmc_parse import (
    PmcParseError,
    gm_accuracy_s,
    parse_pmc,
    parse_pmc_status,
    pmc_failure,
)

DATA = Path(__file__).parent / "data" / "ptp"


def text(name: str) -> str:
    return (DATA / name).read_text()


def test_free_running_client_reply() -> None:
    st = parse_pmc_status(text("slave_uncalibrated.txt"))
    assert st.replies == 5
    assert st.master_offset_ns == -252
    assert st.ingress_time_ns is not None and st.ingress_time_ns > 1_700_000_000 * 10**9
    assert st.gm_present is True
    assert st.gm_identity == "ee5580.fffe.dc9762"
    assert st.port_state == "UNCALIBRATED"
    assert st.measuring_port is not None
    assert st.sync_interval_s == 1.0
    assert st.mean_path_delay_ns == 1294.0
    assert st.steps_removed == 1
    assert st.gm_clock_class == 248
    assert st.gm_clock_accuracy == 0xFE
    assert st.current_utc_offset_s == 37
    assert st.ptp_timescale is False
    # pmc.c prints the flags as 0/1 under these names (checked against linuxptp's source)
    assert st.utc_offset_valid is False
    assert st.leap61 is False and st.leap59 is False and st.leap_indicator == 0


def test_leap61_announced_by_a_real_master() -> None:
    """Recorded from a real pair whose master announces leap61 (tests/data/ptp/README.md)."""
    st = parse_pmc_status(text("slave_leap61.txt"))
    assert st.leap61 is True and st.leap59 is False
    assert st.leap_indicator == 1  # as NTP's LI: insert
    assert st.current_utc_offset_s == 37 and st.utc_offset_valid is True
    assert st.time_traceable is True and st.frequency_traceable is True


def test_leap59_is_a_deletion() -> None:
    t = text("slave_leap61.txt").replace("leap61                1", "leap61                0")
    t = t.replace("leap59                0", "leap59                1")
    assert parse_pmc_status(t).leap_indicator == 2


def test_utc_offset_not_vouched_for_is_floored_like_ptp4l() -> None:
    from chronotickd.sources.pmc_parse import PtpStatus
    from chronotickd.sources.ptp import UTC_OFFSET_FLOOR_S, utc_offset_s

    assert utc_offset_s(PtpStatus(current_utc_offset_s=38, utc_offset_valid=True)) == 38
    assert utc_offset_s(PtpStatus(current_utc_offset_s=0, utc_offset_valid=False)) == \
        UTC_OFFSET_FLOOR_S == 37
    assert utc_offset_s(PtpStatus(current_utc_offset_s=38, utc_offset_valid=False)) == 38


def test_dead_master_keeps_old_offset_but_port_and_ingress_tell() -> None:
    st = parse_pmc_status(text("slave_master_dead_listening.txt"))
    assert st.master_offset_ns == 383 and st.gm_present is True  # stale, looks alive
    assert st.port_state == "LISTENING"
    assert st.measuring_port is None
    assert st.ingress_time_ns == 0


def test_master_and_slave_states() -> None:
    assert parse_pmc_status(text("master.txt")).port_state == "MASTER"
    assert parse_pmc_status(text("derived_slave.txt")).port_state == "SLAVE"


def test_no_ptp4l_gives_no_replies() -> None:
    st = parse_pmc_status(text("no_ptp4l.txt"))
    assert st.replies == 0 and st.master_offset_ns is None and st.port_state is None
    assert pmc_failure(text("no_ptp4l.txt")) is None


def test_permission_denied_is_recognised() -> None:
    reason = pmc_failure(text("perm_denied.txt"))
    assert reason is not None and "permission denied" in reason
    assert "bind failed" in reason


def test_unsupported_query_line_is_skipped() -> None:
    replies = parse_pmc(text("mgmt_error.txt"))
    assert [r.tlv for r in replies] == ["TIME_STATUS_NP"]
    assert replies[0].fields["master_offset"] == "383"


def test_management_error_status_is_ignored() -> None:
    replies = parse_pmc(text("synthetic_error_status.txt"))
    assert [(r.error, r.tlv) for r in replies] == [(True, ""), (False, "PORT_DATA_SET")]
    st = parse_pmc_status(text("synthetic_error_status.txt"))
    assert st.master_offset_ns is None and st.port_state == "UNCALIBRATED"


@pytest.mark.parametrize("name, field", [
    ("malformed_offset.txt", "master_offset"),
    ("malformed_state.txt", "portState"),
    ("malformed_delay.txt", "meanPathDelay"),
])
def test_malformed_values_raise_naming_the_field(name: str, field: str) -> None:
    with pytest.raises(PmcParseError, match=field):
        parse_pmc_status(text(name))


def test_truncated_output_is_incomplete_not_wrong() -> None:
    st = parse_pmc_status(text("malformed_truncated.txt"))
    assert st.master_offset_ns == -252 and st.port_state == "UNCALIBRATED"
    assert st.mean_path_delay_ns is None  # the source refuses this poll


def test_garbage_input() -> None:
    assert parse_pmc("") == []
    assert parse_pmc("\t\tmaster_offset 5\nrandom words\n") == []
    with pytest.raises(PmcParseError):
        parse_pmc_status("\tx seq 0 RESPONSE MANAGEMENT TIME_STATUS_NP\n\t\tgmPresent maybe\n")


def test_gm_accuracy_table() -> None:
    assert gm_accuracy_s(0x21, 0.0) == 100e-9
    assert gm_accuracy_s(0x29, 0.0) == 1e-3
    assert gm_accuracy_s(0xFE, 5e-6) == 5e-6
    assert gm_accuracy_s(None, 7e-6) == 7e-6
    assert math.isinf(gm_accuracy_s(0x31, 0.0))
