"""Across hosts: three daemons in three network namespaces against one chronyd in a fourth.

The namespaces are joined by veth pairs on a bridge in the server's namespace (private test
addresses). The test process (root namespace) stamps events through the daemons' Unix
sockets, alternating between them, one after the other: the real order is the loop order.
The ordering rule "A before B only if A.latest < B.earliest" must never call a later event
"before" an earlier one. All namespaces and processes are removed in ``finally``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import CHRONYD, PYTHONPATH, REPO, kill_pid, wait_for_socket, write_config

from chronotick_client import Client

IP = shutil.which("ip")
pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or IP is None or CHRONYD is None,
                       reason="needs root, iproute2 and chronyd for network namespaces"),
]
EVENTS = 12_000
NTP_PORT = 11123


def sh(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=20)  # type: ignore


def order_events(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """A provably happened before B: A.latest < B.earliest (fbclock's rule)."""
    return a[1] < b[0]


def test_three_namespaces_zero_false_before() -> None:
    tag = f"ctrb{os.getpid() % 10000}"
    net = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    server_ns = f"{tag}s"
    clients = [f"{tag}{c}" for c in "abc"]
    work = Path(tempfile.mkdtemp(prefix="ct-multihost-"))
    procs: list[subprocess.Popen] = []
    made: list[str] = []
    try:
        for ns in (server_ns, *clients):
            sh("netns", "add", ns)
            made.append(ns)
            sh("-n", ns, "link", "set", "lo", "up")
        sh("-n", server_ns, "link", "add", "br0", "type", "bridge")
        sh("-n", server_ns, "addr", "add", f"{net}.1/24", "dev", "br0")
        sh("-n", server_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(clients):
            sh("link", "add", ns, "type", "veth", "peer", "name", f"{ns}s")
            sh("link", "set", ns, "netns", ns)
            sh("link", "set", f"{ns}s", "netns", server_ns)
            sh("-n", server_ns, "link", "set", f"{ns}s", "master", "br0", "up")
            sh("-n", ns, "addr", "add", f"{net}.{2 + i}/24", "dev", ns)
            sh("-n", ns, "link", "set", ns, "up")
        cwork = work / "chronyd"
        cwork.mkdir(mode=0o700)
        conf = cwork / "chrony.conf"
        conf.write_text(f"port {NTP_PORT}\nbindaddress {net}.1\nallow {net}.0/24\n"
                        f"local stratum 1\ncmdport 0\nbindcmdaddress {cwork}/chronyd.sock\n"
                        f"pidfile {cwork}/chronyd.pid\ndriftfile {cwork}/drift\n")
        procs.append(subprocess.Popen(
            [IP, "netns", "exec", server_ns, CHRONYD, "-x", "-d", "-f", str(conf), "-u", "root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        socks = []
        for ns in clients:
            d = work / ns
            d.mkdir()
            cfg = write_config(d, ntp__servers=[f"{net}.1:{NTP_PORT}"], ntp__minpoll_s=0.5,
                               ntp__burst_interval_s=0.5, ntp__timeout_s=0.5)
            log = open(d / "daemon.log", "w")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(
                [IP, "netns", "exec", ns, sys.executable, "-m", "chronotickd", "--config",
                 str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONPATH": PYTHONPATH}))
            log.close()
            socks.append(str(d / "ct.sock"))
            wait_for_socket(socks[-1], procs[-1])
        conns = [Client(s) for s in socks]
        deadline = time.monotonic() + 40
        while not all(c.now()["status"] == "synchronized" for c in conns):
            assert time.monotonic() < deadline, [c.sources() for c in conns]
            time.sleep(0.2)
        events: list[tuple[int, int]] = []
        unsynced = 0
        began = time.perf_counter()
        for i in range(EVENTS):
            r = conns[i % 3].now()
            unsynced += r["status"] != "synchronized"
            events.append((r["earliest_ns"], r["latest_ns"]))
        elapsed = time.perf_counter() - began
        # false "before": a later event B whose interval ends before an earlier A's begins
        false_before = 0
        max_earliest = events[0][0]
        for ev in events[1:]:
            if ev[1] < max_earliest:  # some earlier A has A.earliest > B.latest
                false_before += 1
            max_earliest = max(max_earliest, ev[0])
        provable = sum(order_events(events[i], events[i + 1]) for i in range(len(events) - 1))
        cross = sum(order_events(events[i], events[i + 3]) for i in range(len(events) - 3))
        widths = sorted(e[1] - e[0] for e in events)
        print(f"\n{EVENTS} events through 3 namespaced daemons in {elapsed:.2f} s; "
              f"false before: {false_before}; provable order of neighbours: {provable}, "
              f"3 apart: {cross}; median interval {widths[len(widths) // 2] / 1e3:.1f} µs; "
              f"unsynchronized answers: {unsynced}")
        for c in conns:
            c.close()
        assert false_before == 0
        assert unsynced == 0
    finally:
        for p in reversed(procs):
            kill_pid(p)
        for ns in made:
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=20)
        shutil.rmtree(work, ignore_errors=True)
