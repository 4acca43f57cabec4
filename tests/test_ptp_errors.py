"""PTP misconfigured or ptp4l absent: one clear log line, reason in `sources`, serving goes on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from support import cli, daemon_process


def sources_row(sock: str) -> dict:
    out = cli("sources", "--json", socket_path=sock)
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout)["sources"] if r["kind"] == "ptp"]
    return rows[0] if rows else {}  # empty until the first publish


def wait_reason(sock: str, words: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    row: dict = {}
    while time.monotonic() < deadline:
        row = sources_row(sock)
        if words in (row.get("reason") or ""):
            return row
        time.sleep(0.3)
    raise AssertionError(f"no {words!r} in {row}")


def test_pmc_missing(tmp_path: Path) -> None:
    with daemon_process(ptp__enabled=True, ptp__pmc_path=str(tmp_path / "no-pmc"),
                        ptp__poll_interval_s=0.2) as d:
        row = wait_reason(d.socket, "pmc not found")
        assert row["state"] == "unusable" and "ptp.pmc_path" in row["reason"]
        time.sleep(1.0)  # several more polls
        now = json.loads(cli("now", "--json", socket_path=d.socket).stdout)
        assert now["source"] == "system"  # still serving, honestly unsynchronized
        assert d.log().count("pmc not found") == 1


def test_ptp4l_not_running(tmp_path: Path) -> None:
    with daemon_process(ptp__enabled=True, ptp__uds=str(tmp_path / "no-ptp4l"),
                        ptp__poll_interval_s=0.2) as d:
        # as root: no socket there; as a user pmc cannot even bind its reply socket
        expect = "ptp4l not running" if os.geteuid() == 0 else "permission denied"
        row = wait_reason(d.socket, expect)
        assert row["state"] == "unusable"
        time.sleep(1.0)
        assert cli("now", socket_path=d.socket).returncode == 0
        assert d.log().count("PTP source") == 1


@pytest.mark.parametrize("device, words", [
    ("/dev/ptp-none", "no PHC device /dev/ptp-none (ptp.phc_device)"),  # no such device
    ("lo", "no PHC: interface 'lo' (ptp.phc_device) does not have a PHC"),  # real ethtool
])
def test_no_phc(tmp_path: Path, device: str, words: str) -> None:
    """The PHC is read only after pmc answered, so a fake pmc replays a recorded poll; the
    daemon reads the PHC itself: a missing device is one clear log line naming the key."""
    data = Path(__file__).parent / "data" / "ptp" / "slave_uncalibrated.txt"
    fake = tmp_path / "pmc"
    fake.write_text(f"#!/bin/sh\ncat '{data}'\n")
    fake.chmod(0o755)
    with daemon_process(ptp__enabled=True, ptp__pmc_path=str(fake),
                        ptp__phc_device=device, ptp__poll_interval_s=0.2) as d:
        row = wait_reason(d.socket, words)
        assert row["state"] == "unusable"
        time.sleep(1.0)
        assert d.log().count("(ptp.phc_device)") == 1
        assert d.log().count(words) == 1
