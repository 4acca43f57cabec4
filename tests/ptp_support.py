"""A real ptp4l pair over a veth link between two network namespaces, for tests and benches.

Recipe from ../shared/REFERENCE.md §4: software timestamping (``-S``), both ends
``--free_running 1`` so neither ptp4l ever adjusts the machine's clock (namespaces share it),
each ptp4l with its own ``--uds_address`` in a private temp dir (socket paths are shared
across namespaces; ``pmc -s PATH`` works from the root namespace). Everything is made with
unique names (``ctptpA-<pid>-<n>``), processes are killed by PID and the namespaces deleted
(which removes the veth pair) in ``finally``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import kill_pid

_counter = itertools.count()
SUBNET = "198.18.7"  # RFC 2544 benchmarking range; private to the namespaces anyway


def ptp_skip_reason() -> str | None:
    """Why the real-ptp4l tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and ptp4l"
    for tool, pkg in (("ip", "iproute2"), ("ptp4l", "linuxptp"), ("pmc", "linuxptp")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {pkg})"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class PtpPair:
    tag: str
    ns_master: str
    ns_client: str
    veth_master: str
    veth_client: str
    workdir: Path
    uds_master: str
    uds_client: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _start(self, role: str) -> subprocess.Popen:
        if role == "master":
            ns, dev, uds, extra = self.ns_master, self.veth_master, self.uds_master, []
        else:
            ns, dev, uds, extra = self.ns_client, self.veth_client, self.uds_client, ["-s"]
        log = open(self.workdir / f"{role}.log", "a")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "ptp4l", "-S", *extra, "-i", dev, "-m",
             "--free_running", "1", f"--uds_address={uds}"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[role] = proc
        return proc

    traceable: bool = True  # the master announces a GNSS-locked, traceable grandmaster

    def start_master(self) -> None:
        self._start("master")
        if self.traceable:
            self.announce_traceable()

    def announce_traceable(self, traceable: bool = True, timeout: float = 10.0, *,
                           leap61: int = 0, leap59: int = 0, utc_offset: int = 37,
                           utc_offset_valid: int = 1) -> None:
        """Make the master announce what a GNSS-locked grandmaster does (clockClass 6,
        accuracy 0x21 = 100 ns, time/frequency traceable), as phc2sys/ts2phc would on a real
        one. ptp4l's defaults (class 248, not traceable) are priced as untraceable
        (chronotickd/sources/ptp_quality.py). ptpTimescale stays 0: the master's clock is
        CLOCK_REALTIME, which is UTC, and claiming TAI would shift every offset by 37 s.
        ``leap61``/``leap59``/``utc_offset``/``utc_offset_valid`` set the time properties it
        announces (a pending leap second, TAI − UTC)."""
        cls, acc, flag, src = (6, "0x21", 1, "0x20") if traceable else (248, "0xfe", 0, "0xa0")
        cmd = ["pmc", "-u", "-b", "0", "-s", self.uds_master,
               f"SET GRANDMASTER_SETTINGS_NP clockClass {cls} clockAccuracy {acc} "
               f"offsetScaledLogVariance 0x4e5d currentUtcOffset {utc_offset} "
               f"leap61 {leap61} leap59 {leap59} currentUtcOffsetValid {utc_offset_valid} "
               f"ptpTimescale 0 timeTraceable {flag} frequencyTraceable {flag} timeSource {src}"]
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
            if "GRANDMASTER_SETTINGS_NP" in out and f"timeTraceable           {flag}" in out \
                    and f"leap61                  {leap61}" in out:
                return
            time.sleep(0.2)
        raise RuntimeError("ptp4l master did not take GRANDMASTER_SETTINGS_NP:\n" + out)

    def kill_master(self) -> None:
        proc = self.procs.pop("master", None)
        if proc is not None:
            kill_pid(proc)

    def client_pmc(self, *queries: str) -> str:
        """pmc's output for ``queries`` asked of the client ptp4l."""
        return subprocess.run(["pmc", "-u", "-b", "0", "-s", self.uds_client, *queries],
                              capture_output=True, text=True, timeout=5).stdout

    def client_status(self) -> str:
        out = subprocess.run(["pmc", "-u", "-b", "0", "-s", self.uds_client,
                              "GET TIME_STATUS_NP", "GET PORT_DATA_SET"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout

    def wait_client_measuring(self, timeout: float = 40.0) -> float:
        """Seconds until the client reports UNCALIBRATED/SLAVE with a Sync received."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            out = self.client_status()
            state_ok = "UNCALIBRATED" in out or "\tSLAVE" in out or " SLAVE" in out
            ingress = [ln.split()[-1] for ln in out.splitlines() if "ingress_time" in ln]
            if state_ok and ingress and ingress[0] != "0":
                return time.monotonic() - began
            time.sleep(0.5)
        raise RuntimeError(f"ptp4l client not measuring after {timeout} s:\n"
                           + (self.workdir / "client.log").read_text()[-2000:])


@contextlib.contextmanager
def ptp_pair(wait: bool = True, traceable: bool = True) -> Iterator[PtpPair]:
    n = next(_counter)
    tag = f"{os.getpid()}-{n}"
    work = Path(tempfile.mkdtemp(prefix="ctptp-"))
    os.chmod(work, 0o700)
    pair = PtpPair(tag=tag, ns_master=f"ctptpA-{tag}", ns_client=f"ctptpB-{tag}",
                   veth_master=f"ctpa{os.getpid() % 100000}{n}"[:15],
                   veth_client=f"ctpb{os.getpid() % 100000}{n}"[:15], workdir=work,
                   uds_master=str(work / "ptp4l-master"), uds_client=str(work / "ptp4l-client"),
                   traceable=traceable)
    made: list[str] = []
    try:
        for ns in (pair.ns_master, pair.ns_client):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", pair.veth_master, "type", "veth", "peer", "name", pair.veth_client)
        _ip("link", "set", pair.veth_master, "netns", pair.ns_master)
        _ip("link", "set", pair.veth_client, "netns", pair.ns_client)
        for ns, dev, host in ((pair.ns_master, pair.veth_master, 1),
                              (pair.ns_client, pair.veth_client, 2)):
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{host}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        pair.start_master()
        pair._start("client")
        if wait:
            pair.wait_client_measuring()
        yield pair
    finally:
        for proc in list(pair.procs.values()):
            kill_pid(proc)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        # a veth left in the root namespace (failure before the move) goes too
        subprocess.run(["ip", "link", "del", pair.veth_master], capture_output=True, timeout=10)
        shutil.rmtree(work, ignore_errors=True)


# -- the failover scenario (test_ptp_failover.py asserts it, benchmarks/ptp_failover.py times it)
@dataclass
class FailoverRun:
    poll_interval_s: float
    to_ptp_s: float  # daemon start → `now` says source ptp with bound < 1 ms
    ptp_bound_s: float  # the bound `now` reported then
    ptp_bound_settled_s: float | None = None  # ... and ``settle_s`` later
    to_ntp_s: list[float] = field(default_factory=list)  # master killed → source ntp
    back_to_ptp_s: list[float] = field(default_factory=list)  # master restarted → ptp
    ntp_bound_s: list[float] = field(default_factory=list)
    sources_while_dead: dict = field(default_factory=dict)
    cli_now_ptp: dict = field(default_factory=dict)
    cli_now_ntp: dict = field(default_factory=dict)
    sources_text: str = ""


def _wait_source(client, want: str, timeout: float, max_bound_s: float = 1e-3
                 ) -> tuple[float, dict]:
    began = time.monotonic()
    last: dict = {}
    while time.monotonic() - began < timeout:
        last = client.now()
        if last["source"] == want and last["bound_ns"] < max_bound_s * 1e9:
            return time.monotonic() - began, last
        time.sleep(0.1)
    raise AssertionError(f"source {want!r} not reached in {timeout} s; last answer {last}")


def failover_scenario(pair: PtpPair, ntp_server: str, poll_interval_s: float = 2.0,
                      cycles: int = 1, start_timeout: float = 30.0, settle_s: float = 0.0
                      ) -> FailoverRun:
    """Daemon with PTP (the pair's client) + NTP (a loopback chronyd); kill/restart master."""
    import json

    from support import cli, daemon_process

    from chronotick_client.client import Client

    with daemon_process(ntp__servers=[ntp_server], ptp__enabled=True,
                        ptp__uds=pair.uds_client,
                        ptp__poll_interval_s=poll_interval_s) as d:
        client = Client(d.socket, timeout=2.0)
        try:
            t, ans = _wait_source(client, "ptp", start_timeout)
            run = FailoverRun(poll_interval_s, t, ans["bound_ns"] / 1e9)
            run.cli_now_ptp = json.loads(cli("now", "--json", socket_path=d.socket).stdout)
            if settle_s > 0:
                time.sleep(settle_s)
                ans = client.now()
                run.ptp_bound_settled_s = ans["bound_ns"] / 1e9 if ans["source"] == "ptp" else None
            for _ in range(cycles):
                pair.kill_master()
                t, ans = _wait_source(client, "ntp", 30.0)
                run.to_ntp_s.append(t)
                run.ntp_bound_s.append(ans["bound_ns"] / 1e9)
                run.cli_now_ntp = json.loads(cli("now", "--json", socket_path=d.socket).stdout)
                run.sources_while_dead = client.sources()
                run.sources_text = cli("sources", socket_path=d.socket).stdout
                pair.start_master()
                t, _ans = _wait_source(client, "ptp", 90.0)
                run.back_to_ptp_s.append(t)
            return run
        finally:
            client.close()
