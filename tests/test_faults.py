"""Fault injection against a real daemon: dead, lying, kissing and unsynchronized NTP servers,
spikes, damaged state files, SIGKILL during a state write.

Truth is known in every case: chronyd (``-x``, local stratum 1) and the test responder with
``shift = 0`` serve the machine's own clock, so the true offset is 0 and an honest answer has
``|offset_ns| ≤ bound_ns``. Each case also checks status and that the log says it once.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from ntp_responder import responder
from support import PYTHONPATH, REPO, chronyd_server, daemon_process, kill_pid, wait_for

from chronotick_client import Client
from chronotickd import statefile
from chronotickd.sources import clocks

FAST = dict(ntp__minpoll_s=0.5, ntp__maxpoll_s=0.5, ntp__timeout_s=0.3,
            clock__stale_after_s=2)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chronyd needs root here")




def honest(r: dict[str, Any], true_offset_ns: int = 0) -> None:
    assert abs(r["offset_ns"] - true_offset_ns) <= r["bound_ns"], r
    assert r["earliest_ns"] <= r["system_time_ns"] + true_offset_ns <= r["latest_ns"]


def source(c: Client, spec: str) -> dict[str, Any]:
    return next((s for s in c.sources()["sources"] if s["name"] == f"ntp:{spec}"),
                {"state": None})


@needs_root
def test_ntp_server_silent() -> None:
    """chronyd killed: freerunning, bound growing, one log line, still honest."""
    with chronyd_server() as ntp, daemon_process(ntp__servers=[ntp.server], **FAST) as d, \
            Client(d.socket) as c:
        wait_for(lambda: c.now()["status"] == "synchronized", what="synchronized")
        honest(c.now())
        kill_pid(ntp.proc)  # by PID: the one we started
        r1 = wait_for(lambda: (r := c.now())["status"] == "freerunning" and r,
                      what="freerunning")
        honest(r1)
        time.sleep(1.0)
        r2 = c.now()
        assert r2["status"] == "freerunning" and r2["bound_ns"] > r1["bound_ns"]
        assert r2["age_ns"] > r1["age_ns"]
        honest(r2)
        assert source(c, ntp.server)["state"] == "unreachable"
        time.sleep(1.0)  # several more failed rounds: still one line
        assert d.log().count("no NTP server usable") == 1, d.log()


@needs_root
def test_falseticker_outvoted(chronyd) -> None:  # type: ignore[no-untyped-def]
    """Three servers, one 0.5 s off: it is shown as falseticker and never moves the answer."""
    with responder(0.0) as good, responder(0.5) as liar, \
            daemon_process(ntp__servers=[chronyd.server, good.server, liar.server],
                           **FAST) as d, Client(d.socket) as c:
        wait_for(lambda: c.now()["status"] == "synchronized", what="synchronized")
        wait_for(lambda: source(c, liar.server)["state"] == "falseticker", what="falseticker")
        row = source(c, liar.server)
        assert "disjoint" in row["reason"]
        assert source(c, good.server)["state"] == "ok"
        for _ in range(10):
            r = c.now()
            # the liar's 0.5 s never reaches the answer (honesty itself: see the next test)
            assert abs(r["offset_ns"]) < 5_000_000 and r["status"] == "synchronized"
            assert r["bound_ns"] < 50_000_000
            time.sleep(0.1)
        assert "Traceback" not in d.log()


@needs_root
# Found by this test: a slope fitted through few, biased loopback samples claimed too little
# uncertainty. Fixed by the few-sample (Student-t) widening of the served variances in
# core/estimator.py; kept as a regression test.
def test_bound_honest_with_three_servers(chronyd) -> None:  # type: ignore[no-untyped-def]
    with responder(0.0) as good, responder(0.5) as liar, \
            daemon_process(ntp__servers=[chronyd.server, good.server, liar.server],
                           **FAST) as d, Client(d.socket) as c:
        wait_for(lambda: c.now()["status"] == "synchronized", what="synchronized")
        deadline = time.monotonic() + 8
        bad = total = 0
        while time.monotonic() < deadline:
            r = c.now()
            total += 1
            bad += abs(r["offset_ns"]) > r["bound_ns"]
            time.sleep(0.02)
        assert bad == 0, f"{bad} of {total} answers had the truth outside the bound ({d.socket})"


def hostile_replies(reply: bytes, request: bytes) -> list[tuple[bytes, bool]]:
    """Before each genuine reply: truncated, oversized, garbage, wrong origin, wrong mode,
    and the genuine bytes from another port. Only the last datagram is usable."""
    wrong_origin = reply[:24] + bytes(8) + reply[32:]
    wrong_mode = bytes([reply[0] & ~7 | 5]) + reply[1:]
    return [(reply[:40], False), (reply + b"\0" * 1600, False), (b"\xff" * 48, False),
            (wrong_origin, False), (wrong_mode, False), (reply, True), (reply, False)]


def test_hostile_server_replies_are_dropped_and_counted() -> None:
    """A server (or someone on the path) sending malformed, truncated, oversized and spoofed
    datagrams: the daemon synchronizes on the genuine replies and counts the rest."""
    with responder(0.0) as ntp:
        ntp.mangle = hostile_replies  # from the first request on
        check_hostile(ntp)


def check_hostile(ntp: Any) -> None:
    with daemon_process(ntp__servers=[ntp.server], **FAST) as d, Client(d.socket) as c:
        wait_for(lambda: c.now()["status"] == "synchronized", what="synchronized")
        honest(c.now())
        row = source(c, ntp.server)
        assert row["state"] == "ok" and row["good"] >= 3
        by = row["dropped_by"]
        assert by["malformed packet"] >= 2 * row["good"]  # truncated and oversized
        assert by["origin timestamp mismatch"] >= 2 * row["good"]  # garbage, wrong origin
        assert by["not a server reply (mode/version)"] >= row["good"]
        assert "wrong source address" not in by  # the connected socket never saw those
        assert "Traceback" not in d.log()


@pytest.mark.parametrize("code", ["RATE", "DENY"])
def test_kiss_of_death(code: str) -> None:
    with responder(0.0) as kod:
        kod.kiss(code)
        check_kiss(code, kod)


def check_kiss(code: str, kod: Any) -> None:
    with daemon_process(ntp__servers=[kod.server], **FAST) as d, Client(d.socket) as c:
        wait_for(lambda: source(c, kod.server)["state"] in ("rejected", "stopped"), what="kod")
        time.sleep(4.0)
        row = source(c, kod.server)
        r = c.now()
        assert r["status"] == "unsynchronized"  # never synchronized on a kissing server
        honest(r)
        if code == "DENY":
            assert row["state"] == "stopped" and "DENY" in row["reason"]
            assert kod.requests == 1  # stopped at once
            assert d.log().count("kiss-o'-death DENY: no longer polled") == 1
        else:
            assert row["state"] == "rejected" and "RATE" in row["reason"]
            # backoff: at 0.5 s a poll, 4 s would be 8+ requests without it
            assert kod.requests <= 5, kod.requests


def test_leap_indicator_unsynchronized() -> None:
    with responder(0.0) as ntp:
        ntp.leap = 3
        check_leap(ntp)


def check_leap(ntp: Any) -> None:
    with daemon_process(ntp__servers=[ntp.server], **FAST) as d, Client(d.socket) as c:
        wait_for(lambda: source(c, ntp.server)["state"] == "rejected", what="rejected")
        assert "unsynchronized" in source(c, ntp.server)["reason"]
        time.sleep(1.5)
        r = c.now()
        assert r["status"] == "unsynchronized" and c.status()["measurements"] == 0
        honest(r)
        assert d.log().count("no NTP server usable") == 1


def test_large_spikes_are_outliers() -> None:
    """Every 4th reply 50 ms off: rejected as outliers; answers stay honest throughout."""
    with responder(0.0) as ntp, daemon_process(ntp__servers=[ntp.server], **FAST) as d, \
            Client(d.socket) as c:
        ntp.spike_every, ntp.spike_s = 4, 0.05
        wait_for(lambda: c.now()["status"] == "synchronized", what="synchronized")
        deadline = time.monotonic() + 5
        bounds = []
        while time.monotonic() < deadline:
            r = c.now()
            honest(r)
            bounds.append(r["bound_ns"])
            time.sleep(0.05)
        st = c.status()
        assert st["outliers"] >= 2 and st["steps"] == 0
        # an unconfirmed spike widens the bound (spike or step?) until the next good sample
        assert max(bounds) > 40_000_000 and min(bounds) < 5_000_000
        assert "clock step detected" not in d.log()


GOOD_STATE = {"format": 2, "writer": "chronotickd", "raw": 0.0, "epoch": 0.0, "offset": 1e-4,
              "freq": 2e-6, "offset_stddev": 1e-5, "freq_stddev": 1e-8, "systematic": 1e-4,
              "saved_raw": 0.0, "saved_real": 0.0, "boot_id": "b"}
DAMAGED = {
    "truncated": json.dumps(GOOD_STATE)[:30],
    "garbage": "\x00\xff\x13 not json at all",
    "empty": "",
    "list": "[1, 2, 3]",
    "nan": json.dumps({**GOOD_STATE, "freq": float("nan")}),
    "wrong_type": json.dumps({**GOOD_STATE, "offset": "soon"}),
    "old_format": json.dumps({**GOOD_STATE, "format": 1}),
    "foreign": json.dumps({**GOOD_STATE, "writer": "ntpd"}),
    "no_boot_id": json.dumps({k: v for k, v in GOOD_STATE.items() if k != "boot_id"}),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_state_file_is_ignored(kind: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="ct-faults-"))
    try:
        (work / "state").mkdir()
        (work / "state" / "drift.json").write_text(DAMAGED[kind])
        (work / "state" / ".drift-leftover").write_text('{"format": 1, "t"')
        with daemon_process(work) as d, Client(d.socket) as c:
            r = c.now()
            assert r["status"] == "unsynchronized" and r["source"] == "system"
            honest(r)
            assert d.log().count("ignoring state file") == 1, d.log()
        assert not (work / "state" / ".drift-leftover").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_good_state_file_is_restored_freerunning() -> None:
    """Control for the above: a valid file restores a freerunning, growing bound."""
    work = Path(tempfile.mkdtemp(prefix="ct-faults-"))
    try:
        (work / "state").mkdir()
        now = clocks.read()  # same boot, saved just now
        (work / "state" / "drift.json").write_text(json.dumps(
            {**GOOD_STATE, "raw": now.raw, "saved_raw": now.raw, "saved_real": now.real,
             "epoch": clocks.start_epoch(), "boot_id": statefile.boot_id()}))
        with daemon_process(work) as d, Client(d.socket) as c:
            r1 = c.now()
            time.sleep(0.3)
            r2 = c.now()
            assert r1["status"] == "freerunning" and r1["source"] == "restored"
            assert r2["bound_ns"] > r1["bound_ns"]
            assert "ignoring" not in d.log()
    finally:
        shutil.rmtree(work, ignore_errors=True)


WRITER = """
import sys
from chronotickd import statefile
i = 0
while True:
    i += 1
    statefile.save(sys.argv[1], {"raw": float(i), "epoch": 0.0, "offset": i * 1e-6,
                                 "freq": 1e-6, "offset_stddev": 1e-5, "freq_stddev": 1e-8,
                                 "systematic": 1e-4, "saved_raw": float(i),
                                 "saved_real": float(i), "boot_id": "b",
                                 "pad": "x" * (i % 5000)})
"""


def test_sigkill_during_state_write_never_tears() -> None:
    """A writer killed at random moments leaves the old or the new file, never a torn one."""
    work = Path(tempfile.mkdtemp(prefix="ct-statekill-"))
    rng = random.Random(8)
    seen: set[float] = set()
    try:
        for _ in range(25):
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(work)], cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": PYTHONPATH})
            time.sleep(0.25 + rng.random() * 0.2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            path = work / statefile.STATE_FILE
            if not path.exists():
                continue
            raw = json.loads(path.read_text())  # must parse: never torn
            assert raw["format"] == 2 and raw["pad"] == "x" * (int(raw["raw"]) % 5000)
            data = statefile.load(work)
            assert data is not None and all(math.isfinite(v) for k, v in data.items()
                                            if k != "boot_id")
            seen.add(data["raw"])
            assert not list(work.glob(".drift-*"))  # load cleared leftovers
        assert len(seen) >= 5  # the kills really landed at different points
    finally:
        shutil.rmtree(work, ignore_errors=True)
