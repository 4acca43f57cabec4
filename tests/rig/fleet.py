"""Many rig daemons watched as a fleet: events stamped across hosts and ordered by the MCP
server's own ``order_events``, metrics scraped over HTTP, memory and CPU read from /proc.

Scenario (h) of the truth suite lives here (``three_hosts_ordered``, registered in
tests/rig/scenarios.py); benchmarks/bench_fleet.py and tests/test_fleet.py use the same
machinery, so the bench cannot drift from what the suite checks.

Truth of an event: a stamp is one `now` answer (or an MCP ``get_time``) the harness asked for
between two readings of its own, unshimmed clock; stamps are taken one after the other, so
their true order is the order they were taken in (the windows do not overlap; checked). An
ordering claim "A before B" is a violation when B was in truth stamped first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from support import PYTHONPATH, REPO, free_tcp_port, metric, scrape

from chronotick_mcp import tools
from chronotick_mcp.models import MAX_EVENTS, Event
from rig.harness import NS, Rig, RigDaemon, Sample, Score, real_now
from rig.scenarios import Result, _synchronized

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- events and their honest order ----------------------------------------------------------
@dataclass
class Stamp:
    """An event stamped through one daemon: its served interval and the harness's truth."""

    id: str
    host: str
    sample: Sample

    def event(self) -> Event:
        return Event(id=self.id, earliest_ns=self.sample.earliest_ns,
                     latest_ns=self.sample.latest_ns)


@dataclass
class OrderCheck:
    """What ``order_events`` said about every pair, against the true order."""

    pairs: int = 0
    decided: int = 0
    concurrent: int = 0
    # (a, b, relation claimed, ns apart in truth, whether a or b missed its truth)
    violations: list[tuple[str, str, str, int, bool]] = field(default_factory=list)
    close_pairs: int = 0    # pairs stamped less than CLOSE_NS apart in truth
    close_decided: int = 0  # ... of which order_events still ordered
    batches: int = 0

    CLOSE_NS = 1_000_000

    def merge(self, other: OrderCheck) -> None:
        for name in ("pairs", "decided", "concurrent", "close_pairs", "close_decided",
                     "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.violations.extend(other.violations)

    def as_json(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "decided": self.decided, "concurrent": self.concurrent,
                "violations": len(self.violations),
                # a false order needs an interval that missed its truth: if both contain it,
                # A.latest < B.earliest makes A's truth < B's (so this equals violations)
                "violations_with_a_miss": sum(v[4] for v in self.violations),
                "first_violations": self.violations[:5], "close_pairs": self.close_pairs,
                "close_decided": self.close_decided, "batches": self.batches}

    def summary(self) -> str:
        return (f"{self.pairs} pairs in {self.batches} order_events calls: {self.decided} "
                f"ordered, {self.concurrent} concurrent, {len(self.violations)} violations; "
                f"pairs < 1 ms apart: {self.close_pairs}, ordered {self.close_decided}")


def check_pairs(stamps: Sequence[Stamp], pairs: Sequence[Any]) -> OrderCheck:
    """Score one ``order_events`` answer (its ``pairs``, as the tool returns them, models or
    dicts) against the stamps' true order: the order of ``stamps``."""
    rank = {s.id: i for i, s in enumerate(stamps)}
    by_id = {s.id: s for s in stamps}
    for earlier, later in itertools.pairwise(stamps):
        if earlier.sample.recv_ns > later.sample.send_ns:
            raise AssertionError(f"stamps {earlier.id} and {later.id} overlap in true time: "
                                 "their order is not known")
    out = OrderCheck(batches=1)
    for p in pairs:
        a, b, rel = ((p["a"], p["b"], p["relation"]) if isinstance(p, dict)
                     else (p.a, p.b, p.relation))
        out.pairs += 1
        first, second = sorted((a, b), key=rank.__getitem__)
        apart = by_id[second].sample.send_ns - by_id[first].sample.recv_ns
        close = apart < OrderCheck.CLOSE_NS
        out.close_pairs += close
        if rel == "concurrent":
            out.concurrent += 1
            continue
        out.decided += 1
        out.close_decided += close
        claimed_first = a if rel == "before" else b
        if claimed_first != first:
            missed = not (by_id[a].sample.contained and by_id[b].sample.contained)
            out.violations.append((a, b, rel, apart, missed))
    return out


def order_stamps(stamps: Sequence[Stamp], batch: int = MAX_EVENTS) -> OrderCheck:
    """Order consecutive batches of stamps with the MCP server's ``order_events`` function
    (batches as large as one tool call may carry) and check every pair against truth."""
    total = OrderCheck()
    for i in range(0, len(stamps) - 1, batch):
        chunk = stamps[i:i + batch]
        if len(chunk) < 2:
            break
        total.merge(check_pairs(chunk, tools.order_events([s.event() for s in chunk]).pairs))
    return total


# -- the real MCP client --------------------------------------------------------------------
@contextlib.asynccontextmanager
async def mcp_session(d: RigDaemon) -> Any:
    """The MCP SDK's own client, spawning ``python -m chronotick_mcp`` over stdio for one
    daemon. The adapter runs under that daemon's clock shim, as a client on the same host
    would: whatever it reads of the clocks itself (a shared-memory segment's reader does)
    is that host's clock, not the harness's."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    shim = {k: d.env[k] for k in ("LD_PRELOAD", "CLOCKSHIM_CTL") if k in d.env}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "chronotick_mcp", "--socket", d.socket,
                                      "--timeout", "10"],
        cwd=str(REPO), env={"PYTHONPATH": PYTHONPATH, **shim})
    with open(os.devnull, "w") as errlog:
        async with (stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write, read_timeout_seconds=30) as session):
            await session.initialize()
            yield session


async def _call(session: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await session.call_tool(name, args)
    if res.is_error or not isinstance(res.structured_content, dict):
        raise AssertionError(f"MCP {name} failed: {res.content}")
    return res.structured_content


async def mcp_stamp_and_order(daemons: Sequence[RigDaemon], rounds: int,
                              extra: Sequence[Stamp] = ()) -> tuple[list[Stamp], OrderCheck,
                                                                     bool]:
    """Through real MCP clients, one adapter per daemon: stamp ``rounds`` events on each
    (``get_time``, round robin), order them with the ``order_events`` tool and score that
    against truth. With ``extra`` stamps, also send one batch of them to the tool and report
    whether its answer equals the in-process function's (the bulk path)."""
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(mcp_session(d)) for d in daemons]
        stamps: list[Stamp] = []
        for r in range(rounds):
            for d, s in zip(daemons, sessions, strict=True):
                send = time.clock_gettime_ns(time.CLOCK_REALTIME)
                ans = await _call(s, "get_time", {})
                recv = time.clock_gettime_ns(time.CLOCK_REALTIME)
                stamps.append(Stamp(f"mcp{r}-{d.name}", d.name, d.sample(send, recv, ans)))
        stamps = stamps[:MAX_EVENTS]
        told = await _call(sessions[0], "order_events",
                           {"events": [s.event().model_dump() for s in stamps]})
        check = check_pairs(stamps, told["pairs"])
        same = True
        if len(extra) >= 2:
            batch = list(extra[:MAX_EVENTS])
            told = await _call(sessions[0], "order_events",
                               {"events": [s.event().model_dump() for s in batch]})
            mine = tools.order_events([s.event() for s in batch]).model_dump()
            same = told == mine
        return stamps, check, same


# -- the fleet ------------------------------------------------------------------------------
@dataclass
class Oscillator:
    """One host's clock: where it starts, how its oscillator runs, what disturbs it."""

    offset_s: float
    freq_ppm: float
    wander_ppm: float = 0.0      # amplitude of a sinusoidal frequency wander
    wander_period_s: float = 60.0
    event: str = ""              # "step" or "slew" by another daemon, mid-run
    event_at_s: float = 0.0      # seconds into the measuring phase
    step_s: float = 0.0
    slew_ppm: float = 0.0
    slew_for_s: float = 0.0
    done: bool = False

    def describe(self) -> str:
        what = (f"{self.offset_s * 1e3:+.1f} ms {self.freq_ppm:+.1f} ppm"
                + (f" wander ±{self.wander_ppm:.2f} ppm/{self.wander_period_s:.0f} s"
                   if self.wander_ppm else ""))
        if self.event == "step":
            what += f", stepped {self.step_s * 1e3:+g} ms at {self.event_at_s:.0f} s"
        elif self.event == "slew":
            what += (f", slewed {self.slew_ppm:+.0f} ppm for {self.slew_for_s:.0f} s at "
                     f"{self.event_at_s:.0f} s")
        return what


def plan_oscillators(n: int, seed: int, measure_s: float) -> list[Oscillator]:
    """Varied clocks: offsets within ±100 ms, frequency errors within ±50 ppm; of every four
    hosts one is left alone, one wanders (a sinusoid of up to 1 ppm), one is stepped
    (±0.5 ms or ±2 s) and one slewed (±500 ppm) by "another daemon" mid-run."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        o = Oscillator(offset_s=rnd.uniform(-0.1, 0.1), freq_ppm=rnd.uniform(-50, 50))
        if i % 4 == 2:
            o.wander_ppm = rnd.uniform(0.2, 1.0)
            o.wander_period_s = rnd.uniform(30, 120)
        at = rnd.uniform(0.2, 0.5) * measure_s
        if i % 4 == 1:
            o.event, o.event_at_s = "step", at
            o.step_s = rnd.choice((0.0005, -0.0005, 2.0, -2.0))
        elif i % 4 == 3:
            o.event, o.event_at_s = "slew", at
            o.slew_ppm = rnd.choice((500.0, -500.0))
            o.slew_for_s = min(10.0, 0.25 * measure_s)
        out.append(o)
    return out


@dataclass
class Host:
    daemon: RigDaemon
    osc: Oscillator
    port: int
    score: Score = field(default_factory=Score)
    now_calls: int = 0                       # `now` requests the harness sent it
    series: list[tuple[float, float, float]] = field(default_factory=list)  # t, err, bound
    to_sync_s: float | None = None

    @property
    def name(self) -> str:
        return self.daemon.name

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def query(self) -> Sample:
        self.now_calls += 1
        return self.daemon.query()


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class ScrapeCheck:
    """A scrape of every host, scored: the served offset ± bound must contain the true
    offset (−D over the HTTP request's window), and the counts must agree."""

    hosts: int = 0
    contained: int = 0
    synchronized_metric: int = 0
    synchronized_now: int = 0
    requests_agree: int = 0
    rss_agree: int = 0
    seconds: float = 0.0
    misses: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "misses"} | {
            "misses": self.misses[:10]}


class Fleet:
    """``n`` shimmed daemons on one Rig against one reference, each with a metrics port."""

    def __init__(self, rig: Rig, server: str, n: int, *, seed: int = 1,
                 measure_s: float = 60.0, poll_s: float = 2.0) -> None:
        self.rig, self.server, self.measure_s = rig, server, measure_s
        self.hosts: list[Host] = []
        cfg = {"ntp__burst": 4, "ntp__burst_interval_s": 0.5, "ntp__minpoll_s": poll_s,
               "ntp__maxpoll_s": poll_s, "ntp__timeout_s": 0.5, "model__enabled": False,
               "log_level": "warning"}
        for i, osc in enumerate(plan_oscillators(n, seed, measure_s)):
            port = free_tcp_port()
            d = rig.daemon(f"h{i:02d}", [server], start=False,
                           metrics__listen=f"127.0.0.1:{port}", **cfg)
            d.clock.set(offset_s=osc.offset_s, freq_ppm=osc.freq_ppm)
            self.hosts.append(Host(d, osc, port))
        self.stamps: list[Stamp] = []
        self.t0 = 0.0  # monotonic start of the measuring phase

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 120.0, stagger_s: float = 0.0,
              starver: CpuStarver | None = None) -> None:
        """Spawn the daemons ``stagger_s`` apart (0: all at once, a CPU storm on one
        machine), each into ``starver``'s cgroup if given, then wait for each socket and for
        synchronized."""
        for i, h in enumerate(self.hosts):
            if i and stagger_s:
                time.sleep(stagger_s)
            h.daemon.spawn()
            if starver is not None:
                assert h.daemon.proc is not None
                starver.add(h.daemon.proc.pid)
        for h in self.hosts:
            h.daemon.connect()
        deadline = time.monotonic() + timeout
        waiting = list(self.hosts)
        while waiting:
            if time.monotonic() > deadline:
                raise AssertionError("not synchronized within "
                                     f"{timeout} s: {[h.name for h in waiting]}")
            for h in list(waiting):
                proc = h.daemon.proc
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{h.name} exited:\n{h.daemon.log()[-2000:]}")
                if h.query().status == "synchronized":
                    h.to_sync_s = (real_now()[0] - h.daemon.started_ns) / NS
                    waiting.remove(h)
            time.sleep(0.2)

    def close(self) -> None:
        """SIGTERM every daemon first (they save state in parallel), then reap each by PID."""
        for h in self.hosts:
            proc = h.daemon.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for h in self.hosts:
            proc = h.daemon.proc
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
        # anything left: Rig.close() kills it (SIGTERM, then SIGKILL) by PID

    # -- the measuring phase --------------------------------------------------------------
    def disturb(self, elapsed: float) -> None:
        """Wander the oscillators; step or slew the clocks whose time has come."""
        for h in self.hosts:
            o, clock = h.osc, h.daemon.clock
            if o.wander_ppm:
                clock.set(freq_ppm=o.freq_ppm + o.wander_ppm * math.sin(
                    2 * math.pi * elapsed / o.wander_period_s))
            if o.event and not o.done and elapsed >= o.event_at_s:
                o.done = True
                if o.event == "step":
                    clock.step(o.step_s)
                else:
                    clock.slew(o.slew_ppm, o.slew_for_s)

    def round(self, elapsed: float) -> None:
        """One `now` from every host, back to back: scored, and kept as a stamped event."""
        for h in self.hosts:
            s = h.query()
            h.score.add(s)
            h.series.append((elapsed, s.error_ns / NS, s.bound_ns / NS))
            self.stamps.append(Stamp(f"{h.name}#{len(self.stamps)}", h.name, s))

    def measure(self, every_s: float = 0.25, scrape_every_s: float = 10.0) -> list[ScrapeCheck]:
        self.t0 = time.monotonic()
        checks, next_scrape = [], 0.0
        while (elapsed := time.monotonic() - self.t0) < self.measure_s:
            self.disturb(elapsed)
            self.round(elapsed)
            if elapsed >= next_scrape:
                checks.append(self.scrape_all())
                next_scrape = elapsed + scrape_every_s
            time.sleep(max(0.0, every_s - (time.monotonic() - self.t0 - elapsed)))
        return checks

    def scrape_all(self) -> ScrapeCheck:
        """Scrape every host once and check it against truth and against `now`."""
        out = ScrapeCheck()
        began = time.monotonic()
        for h in self.hosts:
            out.hosts += 1
            clock = h.daemon.clock
            asked = h.now_calls  # the harness is the daemon's only client: the counter's value
            send = real_now()[0]
            m = scrape(h.port)
            recv = real_now()[0]
            off, bound = metric(m, "chronotick_offset_seconds"), metric(
                m, "chronotick_bound_seconds")
            true_lo, true_hi = sorted((-clock.d_ns(send) / NS, -clock.d_ns(recv) / NS))
            if off - bound <= true_hi and off + bound >= true_lo:
                out.contained += 1
            else:
                out.misses.append(f"{h.name}: offset {off:+.6f} ± {bound:.6f}, true "
                                  f"{true_lo:+.6f}..{true_hi:+.6f}")
            out.synchronized_metric += metric(m, "chronotick_status",
                                              status="synchronized") == 1.0
            out.requests_agree += metric(m, "chronotick_requests_total", op="now") == asked
            out.synchronized_now += h.query().status == "synchronized"
            rss = rss_bytes(h.pid)
            out.rss_agree += abs(metric(m, "process_resident_memory_bytes") - rss) <= \
                0.1 * rss
        out.seconds = time.monotonic() - began
        return out


# -- figures --------------------------------------------------------------------------------
def settled(h: Host, after_s: float) -> Score:
    """The host's answers from ``after_s`` into the measuring phase on (past the young fits
    right after synchronized, whose bounds are wide but honest)."""
    return Score([s for (t, _, _), s in zip(h.series, h.score.samples, strict=True)
                  if t >= after_s])


def fleet_score(hosts: Sequence[Host], after_s: float = 0.0) -> Score:
    total = Score()
    for h in hosts:
        total.extend(settled(h, after_s) if after_s else h.score)
    return total


def worst_host(hosts: Sequence[Host]) -> Host:
    """The host with the largest p99 error (ties: the lower coverage)."""
    return max(hosts, key=lambda h: (h.score.p99_s, -h.score.coverage))


def host_rows(hosts: Sequence[Host], settle_s: float = 0.0) -> list[dict[str, Any]]:
    """Per-host figures (and the raw series: t, served − true, bound) as plain data."""
    return [{"host": h.name, "clock": h.osc.describe(), "osc": asdict(h.osc),
             "queries": h.score.queries, "coverage": h.score.coverage, "mae_s": h.score.mae_s,
             "p99_s": h.score.p99_s, "settled_p99_s": settled(h, settle_s).p99_s,
             "half_width_s": h.score.half_width_s, "to_sync_s": h.to_sync_s,
             "rss_bytes": rss_bytes(h.pid) if h.daemon.proc else None,
             "cpu_s": cpu_seconds(h.pid) if h.daemon.proc else None,
             "series": [(round(t, 3), e, b) for t, e, b in h.series]} for h in hosts]


def dump(path: os.PathLike[str] | str, data: Any) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, default=float)


# -- scenario (h) of the truth suite --------------------------------------------------------
@dataclass
class OrderResult(Result):
    """Scenario (h)'s result: the stamps' score plus what order_events said about them."""

    order: OrderCheck = field(default_factory=OrderCheck)      # bulk: the server's function
    mcp_order: OrderCheck = field(default_factory=OrderCheck)  # through a real MCP client
    mcp_same: bool = True  # the tool's answer to a bulk batch equals the function's

    @property
    def violations(self) -> int:
        return len(self.order.violations) + len(self.mcp_order.violations) + (not self.mcp_same)

    @property
    def note(self) -> str:
        return (f"  bulk: {self.order.summary()}\n  MCP client: {self.mcp_order.summary()}; "
                f"tool == function on a bulk batch: {self.mcp_same}")

    def as_json(self) -> dict[str, Any]:
        return super().as_json() | {"order": self.order.as_json(),
                                    "mcp_order": self.mcp_order.as_json(),
                                    "mcp_same": self.mcp_same}


def three_hosts_ordered(rig: Rig, server: str, scale: float = 1.0) -> OrderResult:
    """(h) three daemons with different clocks (one slewed at 500 ppm by another daemon
    mid-run) stamp events in turn; the MCP server's order_events orders them. Every pair it
    calls ordered must be in the true (stamping) order. The bulk goes through the function
    the server calls; a real MCP client stamps (get_time) and orders a share itself."""
    import anyio

    hosts = [_synchronized(rig, name, server, off, ppm)
             for name, off, ppm in (("hA", 0.040, 25.0), ("hB", -0.060, -30.0),
                                    ("hC", 0.005, 8.0))]
    daemons = [d for d, _ in hosts]
    score, stamps = Score(), []
    began, slewed = time.monotonic(), False
    while (el := time.monotonic() - began) < 8.0 * scale:
        if not slewed and el >= 2.0:
            daemons[2].clock.slew(500.0, 4.0 * scale)
            slewed = True
        for d in daemons:  # back to back: neighbours are a fraction of a ms apart
            s = d.query()
            score.add(s)
            stamps.append(Stamp(f"{d.name}-{len(stamps)}", d.name, s))
        time.sleep(0.02)
    order = order_stamps(stamps)
    mcp_stamps, mcp_order, same = anyio.run(mcp_stamp_and_order, daemons, 20, stamps)
    for st in mcp_stamps:
        score.add(st.sample)
    return OrderResult("h-three-hosts-order", score, max(t for _, t in hosts), order=order,
                       mcp_order=mcp_order, mcp_same=same)


# -- a starved machine ----------------------------------------------------------------------
class CpuStarver:
    """Caps the CPU of the processes added to it (all together) with a cgroup of its own:
    cgroup v1's ``cpu`` controller (cfs quota) or v2's ``cpu.max``. A deterministic stand-in
    for a host whose CPU is saturated, without burning the CPU other work needs.

    ``release()`` lifts the cap; ``close()`` moves what is left back where it came from and
    removes the cgroup. Root only.
    """

    PERIOD_US = 100_000

    def __init__(self, percent_of_a_core: float) -> None:
        v1, v2 = "/sys/fs/cgroup/cpu", "/sys/fs/cgroup"
        if os.path.exists(f"{v1}/cpu.cfs_quota_us"):
            self.base, self.v2 = v1, False
        elif "cpu" in _read(f"{v2}/cgroup.subtree_control").split():
            self.base, self.v2 = v2, True
        else:
            raise RuntimeError("no cgroup cpu controller to starve the daemons with")
        self.path = f"{self.base}/chronotick-starve-{os.getpid()}"
        os.mkdir(self.path)
        self.origin: dict[int, str] = {}
        quota = max(1000, round(self.PERIOD_US * percent_of_a_core / 100))
        if self.v2:
            _write(f"{self.path}/cpu.max", f"{quota} {self.PERIOD_US}")
        else:
            _write(f"{self.path}/cpu.cfs_period_us", str(self.PERIOD_US))
            _write(f"{self.path}/cpu.cfs_quota_us", str(quota))

    def add(self, pid: int) -> None:
        for line in _read(f"/proc/{pid}/cgroup").splitlines():
            _, controllers, rel = line.split(":", 2)
            if (self.v2 and controllers == "") or (not self.v2 and "cpu" in
                                                     controllers.split(",")):
                self.origin[pid] = self.base + rel.rstrip("/")
        _write(f"{self.path}/cgroup.procs", str(pid))

    def release(self) -> None:
        if self.v2:
            _write(f"{self.path}/cpu.max", f"max {self.PERIOD_US}")
        else:
            _write(f"{self.path}/cpu.cfs_quota_us", "-1")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.release()
        for pid in _read(f"{self.path}/cgroup.procs").split():
            with contextlib.suppress(OSError):
                _write(f"{self.origin.get(int(pid), self.base)}/cgroup.procs", pid)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
