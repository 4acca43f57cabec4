"""Acceptance of issue 4: PTP preferred, failover to NTP when the master dies, and back.

Real parts: a ptp4l pair in network namespaces (client free-running), a loopback chronyd
(``-x``), the real daemon and the real CLI. Nothing adjusts the system clock.
"""

from __future__ import annotations

import pytest
from ptp_support import failover_scenario, ptp_pair, ptp_skip_reason
from support import Chronyd

pytestmark = [pytest.mark.root, pytest.mark.slow]

POLL_S = 2.0


def test_ptp_then_ntp_then_ptp(chronyd: Chronyd) -> None:
    reason = ptp_skip_reason()
    if reason:
        pytest.skip(reason)
    with ptp_pair() as pair:
        run = failover_scenario(pair, chronyd.server, poll_interval_s=POLL_S)
    print(f"\nPTP selected {run.to_ptp_s:.1f} s after daemon start, bound "
          f"{run.ptp_bound_s * 1e6:.1f} µs; master killed → ntp after {run.to_ntp_s[0]:.1f} s "
          f"({run.to_ntp_s[0] / POLL_S:.1f} poll intervals), restarted → ptp after "
          f"{run.back_to_ptp_s[0]:.1f} s\n{run.sources_text}")
    # `now --json` from the real CLI at each stage
    assert run.cli_now_ptp["source"] == "ptp" and run.cli_now_ptp["bound_ns"] < 1_000_000
    assert run.cli_now_ptp["status"] == "synchronized"
    assert run.to_ptp_s <= 30.0
    assert run.cli_now_ntp["source"] == "ntp"
    assert run.to_ntp_s[0] <= 3 * POLL_S  # the promise: within 3 poll intervals
    # `sources` shows the dead PTP source with its reason, and NTP selected
    rows = {r["kind"]: r for r in run.sources_while_dead["sources"]}
    ptp = rows["ptp"]
    assert ptp["state"] == "unusable" and ptp["selected"] is False
    assert "master silent" in ptp["reason"] or "LISTENING" in ptp["reason"]
    assert ptp["age_ns"] is not None and ptp["bound_ns"] is not None
    assert rows["ntp"]["selected"] is True
    assert "unusable" in run.sources_text
    assert run.back_to_ptp_s  # returned to ptp (within the scenario's 90 s wait)
