"""A hostile NTP server on loopback (tests/ntp_responder.py ``HostileNtp``): malformed, truncated,
oversized, spoofed and wrong-origin replies, all 10 s off. Next to an honest server, and then
alone, the daemon keeps serving: every answer stays honest (the true offset is 0: both servers
read this machine's clock), the bound widens once only the hostile one is left, nothing is
lost (no crash, no traceback, the honest source keeps its samples)."""

from __future__ import annotations

import time

from ntp_responder import HostileNtp, responder
from support import daemon_process, wait_for

from chronotick_client import Client


def _honest(r: dict) -> bool:
    return r["earliest_ns"] <= r["system_time_ns"] <= r["latest_ns"]


def test_hostile_ntp_server_never_moves_the_answer() -> None:
    evil = HostileNtp(shift=10.0).start()
    try:
        with responder() as good, daemon_process(
                ntp__servers=[good.server, evil.server], ntp__burst_interval_s=0.2,
                ntp__minpoll_s=0.5, ntp__maxpoll_s=0.5,
                clock__stale_after_s=2) as d, Client(d.socket) as c:
            wait_for(lambda: c.status()["status"] == "synchronized", 30, "synchronized")
            # past the young fit (FitConfig.young_fit_samples): with 3 samples taken 0.2 s
            # apart under load (ms of delay), its frequency is ±1700 ppm and the bound tens
            # of ms wide for a second or two, which said nothing about the hostile server
            # but made the comparison below fail in one CI run of many
            wait_for(lambda: c.call("tracking")["samples"] >= 8, 30, "8 samples")
            widths = []
            for _ in range(30):  # both servers answering
                r = c.now()
                assert _honest(r), r
                widths.append(r["bound_ns"])
                time.sleep(0.1)
            good.silent = True  # only the hostile server is left
            late = []
            for _ in range(80):
                r = c.now()
                assert _honest(r), r
                late.append(r["bound_ns"])
                time.sleep(0.1)
            assert r["status"] != "synchronized", r  # the honest source went stale
            # Only the hostile server left: the bound grows steadily with the honest fit's age
            # and ends wider than the tightest it was while both answered. (Not than their
            # median: under load each new sample's ms of delay widen the fit while it is
            # polled, by as much as 8 s of silence widens it: 0.43 ms vs 0.32 ms in one run.)
            assert late[-1] > late[40] > late[20], f"the bound did not widen: {late[::10]}"
            assert late[-1] > min(widths), (late[-1], widths)
            assert d.proc.poll() is None and "Traceback" not in d.log(), d.log()
            rows = {row["name"]: row for row in c.call("sources")["sources"]}
            assert any(good.server in n and row.get("samples") for n, row in rows.items())
            assert set(evil.sent) >= {"truncated", "garbage", "spoofed_port", "oversized"}
    finally:
        evil.stop()


def test_malformed_replies_alone_never_synchronize() -> None:
    """Replies no parser could take (truncated, garbage, zero transmit, absurd root,
    wrong origin): the daemon serves, unsynchronized, honest; nothing crashes."""
    evil = HostileNtp(shift=10.0, modes=("truncated", "garbage", "zero_transmit",
                                         "absurd_root")).start()
    try:
        with daemon_process(ntp__servers=[evil.server], ntp__burst_interval_s=0.2,
                            ntp__minpoll_s=0.5, ntp__maxpoll_s=0.5) as d, Client(d.socket) as c:
            wait_for(lambda: sum(evil.sent.values()) >= 20, 30, "20 hostile replies")
            r = c.now()
            assert _honest(r) and r["status"] == "unsynchronized", r
            assert d.proc.poll() is None and "Traceback" not in d.log(), d.log()
    finally:
        evil.stop()
