"""NTP client: packet codec and integer θ/δ, reply checks, origin and peer checks, KoD,
pools (one track per address, replacement), polite scheduling in simulated time, and the
real thing against a loopback chronyd."""

from __future__ import annotations

import itertools
import socket
import time
from collections import Counter
from typing import Any

import pytest
from ntp_responder import Responder
from support import free_udp_port, wait_for

from chronotickd.config import Config
from chronotickd.core.measurement import Measurement
from chronotickd.core.poll_policy import PollConfig, PollPolicy
from chronotickd.sources import ntp_packet as pkt
from chronotickd.sources.ntp import NtpSettings, NtpSource, Reply, parse_server, raw_ns
from chronotickd.sources.ntp_pool import parse_entries, poll_limits

NS = 1_000_000_000
EPOCH = 1_700_000_000  # the fake raw clock starts near 0; raw + EPOCH is "real" time


# -- packet codec and arithmetic -----------------------------------------------------------------
def test_encode_decode_round_trip() -> None:
    p = pkt.NtpPacket(1, 4, 4, 2, 6, -20, 3 << 16, 5, b"GPS\0", 11, 22, 33, 44, b"ext!")
    assert pkt.decode(pkt.encode(p)) == p
    assert p.root_delay_s == 3.0 and p.kiss_code == "GPS"


@pytest.mark.parametrize("n", [0, 1, 47, 1501])
def test_decode_rejects_wrong_sizes(n: int) -> None:
    with pytest.raises(pkt.NtpParseError):
        pkt.decode(b"\x24" * n)


def test_timestamps_are_exact_integers_and_era_aware() -> None:
    ns = 1_700_000_000_123_456_789
    assert abs(pkt.ntp_to_unix_ns(pkt.unix_ns_to_ntp(ns), ns) - ns) <= 1
    # 2036 rollover: a timestamp just after it is read in era 1 near a 2036 pivot
    after = (2**32 - pkt.NTP_EPOCH_OFFSET_S + 10) * NS
    assert pkt.ntp_to_unix_ns(pkt.unix_ns_to_ntp(after), after - 20 * NS) == after


def test_exchange_offset_and_delay_in_integer_ns() -> None:
    # server 2.5 ms ahead of raw + epoch, 300 µs each way, 40 µs inside the server
    t1 = 5 * NS
    t2 = (t1 + EPOCH * NS) + 300_000 + 2_500_000
    t3 = t2 + 40_000
    t4 = t1 + 300_000 + 40_000 + 300_000
    ex = pkt.exchange(t1, t4, pkt.unix_ns_to_ntp(t2), pkt.unix_ns_to_ntp(t3), EPOCH)
    assert abs(ex.offset_ns - 2_500_000) <= 1 and abs(ex.delay_ns - 600_000) <= 1
    assert ex.t_raw_ns == (t1 + t4) // 2
    assert isinstance(ex.offset_ns, int) and isinstance(ex.delay_ns, int)


@pytest.mark.parametrize("spec,expected", [
    ("pool.ntp.org", ("pool.ntp.org", 123)),
    ("127.0.0.1:11123", ("127.0.0.1", 11123)),
    ("[::1]:4123", ("::1", 4123)),
    ("[::1]", ("::1", 123)),
    ("::1", ("::1", 123)),
])
def test_parse_server(spec: str, expected: tuple[str, int]) -> None:
    assert parse_server(spec) == expected


# -- a simulated network --------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeServer:
    """Answers like a server whose time is raw + EPOCH + shift; tweak attributes per test."""

    def __init__(self, shift_s: float = 0.0) -> None:
        self.shift_ns = round(shift_s * NS)
        self.stratum, self.leap, self.refid = 2, 0, b"TEST"
        self.silent = False
        self.spoof_first = False  # send a reply with a wrong origin before the real one
        self.requests = 0
        self.times: list[float] = []

    def answer(self, payload: bytes, t1_ns: int) -> list[bytes]:
        req = pkt.decode(payload)
        t2 = t1_ns + EPOCH * NS + 100_000 + self.shift_ns
        reply = pkt.encode(pkt.NtpPacket(
            self.leap, 4, 4, self.stratum, 6, -20, 0, 7, self.refid, 0, req.transmit_ts,
            pkt.unix_ns_to_ntp(t2), pkt.unix_ns_to_ntp(t2 + 10_000)))
        if self.silent:
            return []
        spoof = reply[:24] + b"\x01" * 8 + reply[32:]
        return [spoof, reply] if self.spoof_first else [reply]


class FakeNet:
    """Transport + resolver: names map to addresses, addresses to FakeServers."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.names: dict[str, list[str]] = {}
        self.servers: dict[str, FakeServer] = {}
        self.lookups: Counter[str] = Counter()

    def add(self, name: str, *ips: str, shift_s: float = 0.0) -> None:
        self.names[name] = list(ips)
        for ip in ips:
            self.servers.setdefault(ip, FakeServer(shift_s))

    def resolve(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        self.lookups[host] += 1
        if host not in self.names:
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET, (ip, port)) for ip in self.names[host]]

    def exchange(self, address: Any, payload: bytes, timeout: float, check: Any) -> Reply:
        ip = address[1][0]
        server = self.servers[ip]
        server.requests += 1
        server.times.append(self.clock.t)
        t1 = round(self.clock.t * NS)
        r = Reply(t1_ns=t1)
        for data in server.answer(payload, t1):
            accepted, why = check(data)
            if why is not None:
                r.dropped.append(why)
                continue
            r.t4_ns, r.accepted = t1 + 210_000, accepted  # symmetric: θ = shift
            return r
        r.error = f"no reply within {timeout:g} s"
        return r


def make_source(net: FakeNet, servers: list[Any], **kw: Any) -> tuple[NtpSource, list]:
    got: list[Measurement] = []
    settings = NtpSettings(servers=servers, **{"minpoll_s": 1.0, "maxpoll_s": 1.0,
                                               "burst": 1, **kw})
    src = NtpSource(settings, got.append, epoch=EPOCH, monotonic=net.clock,
                    resolver=net.resolve, transport=net, wall=lambda: EPOCH + net.clock.t)
    return src, got


def row(src: NtpSource, name: str) -> dict[str, Any]:
    return next(r for r in src.describe() if r["name"] == f"ntp:{name}")


def run_for(src: NtpSource, clock: Clock, seconds: float) -> None:
    end = clock.t + seconds
    while True:
        wake = src.step(clock.t)
        if wake > end:
            clock.t = end
            return
        clock.t = max(wake, clock.t)


# -- per-sample filters, selection, KoD ------------------------------------------------------------
def test_measurement_on_the_time_base() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1", shift_s=0.0025)
    src, got = make_source(net, ["10.0.0.1"])
    src.step(clock.t)
    (m,) = got
    assert m.t == pytest.approx(clock.t + 105e-6, abs=1e-9)  # raw midpoint, seconds
    assert m.offset == pytest.approx(0.0025, abs=2e-9)
    assert m.delay == pytest.approx(200e-6, abs=2e-9)
    assert m.bound == pytest.approx(200e-6 / 2 + 7 / 65536, abs=1e-9)
    r = row(src, "10.0.0.1")
    assert r["state"] == "ok" and r["address"] == "10.0.0.1:123" and r["nts"] is False
    assert r["authenticated"] is False and r["leap"] == 0


@pytest.mark.parametrize("setup,words", [
    (dict(leap=3), "unsynchronized"),
    (dict(stratum=16), "unsynchronized"),
    (dict(stratum=0, refid=b"ABCD"), "kiss-o'-death ABCD"),
])
def test_bad_replies_are_rejected_with_a_reason(setup: dict[str, Any], words: str) -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1")
    for k, v in setup.items():
        setattr(net.servers["10.0.0.1"], k, v)
    src, got = make_source(net, ["10.0.0.1"])
    src.step(clock.t)
    assert got == [] and words in row(src, "10.0.0.1")["reason"]


def test_wrong_origin_is_dropped_and_counted() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1")
    net.servers["10.0.0.1"].spoof_first = True
    src, got = make_source(net, ["10.0.0.1"])
    src.step(clock.t)
    r = row(src, "10.0.0.1")
    assert len(got) == 1 and r["dropped"] == 1
    assert r["dropped_by"] == {"origin timestamp mismatch": 1}


def test_falseticker_outvoted() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1", shift_s=0.001)
    net.add("10.0.0.2", "10.0.0.2", shift_s=0.0012)
    net.add("10.0.0.3", "10.0.0.3", shift_s=0.25)
    src, got = make_source(net, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    src.step(clock.t)
    assert {m.source for m in got} == {"ntp:10.0.0.1", "ntp:10.0.0.2"}
    assert row(src, "10.0.0.3")["state"] == "falseticker"
    assert "majority" in row(src, "10.0.0.3")["reason"]


def test_two_disagreeing_servers_send_nothing() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1", shift_s=0.0)
    net.add("10.0.0.2", "10.0.0.2", shift_s=0.5)
    src, got = make_source(net, ["10.0.0.1", "10.0.0.2"])
    src.step(clock.t)
    assert got == [] and "no majority" in row(src, "10.0.0.1")["reason"]


def test_kod_deny_stops_polling_that_server(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1")
    net.add("10.0.0.2", "10.0.0.2")
    net.servers["10.0.0.1"].stratum, net.servers["10.0.0.1"].refid = 0, b"DENY"
    src, _got = make_source(net, ["10.0.0.1", "10.0.0.2"])
    run_for(src, clock, 10)
    assert row(src, "10.0.0.1")["state"] == "stopped"
    assert net.servers["10.0.0.1"].requests == 1 and net.servers["10.0.0.2"].requests > 5
    assert caplog.text.count("kiss-o'-death DENY: no longer polled") == 1


def test_kod_rate_backs_off() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1")
    net.servers["10.0.0.1"].stratum, net.servers["10.0.0.1"].refid = 0, b"RATE"
    src, _ = make_source(net, ["10.0.0.1"])
    run_for(src, clock, 60)
    gaps = [b - a for a, b in zip(net.servers["10.0.0.1"].times,
                                  net.servers["10.0.0.1"].times[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] >= 2.0 and gaps[-1] >= 16.0  # doubling
    assert "RATE" in row(src, "10.0.0.1")["reason"]


def test_unreachable_servers_log_one_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("10.0.0.1", "10.0.0.1")
    net.servers["10.0.0.1"].silent = True
    src, got = make_source(net, ["10.0.0.1", "no-such.invalid"])
    run_for(src, clock, 10)
    warnings = [r for r in caplog.records if "no NTP server usable" in r.getMessage()]
    assert len(warnings) == 1 and got == []
    assert "no reply" in warnings[0].getMessage()
    assert row(src, "10.0.0.1")["state"] == "unreachable"
    assert row(src, "no-such.invalid")["state"] == "unreachable"


# -- pools -------------------------------------------------------------------------------------
def test_pool_name_becomes_one_track_per_address() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("pool.example", *(f"10.0.1.{i}" for i in range(1, 7)))
    src, got = make_source(net, [{"host": "pool.example", "pool": True, "maxsources": 4}])
    src.step(clock.t)
    rows = src.describe()
    assert len(rows) == 4 and {r["address"] for r in rows} == {
        f"10.0.1.{i}:123" for i in range(1, 5)}
    assert len({m.source for m in got}) == 4  # four separate tracks for the engine


def test_pool_replaces_unreachable_and_falseticking_addresses() -> None:
    clock = Clock()
    net = FakeNet(clock)
    net.add("pool.example", *(f"10.0.1.{i}" for i in range(1, 8)))
    net.servers["10.0.1.1"].silent = True
    net.servers["10.0.1.2"].shift_ns = 300_000_000  # 0.3 s off: a falseticker
    src, _ = make_source(net, [{"host": "pool.example", "pool": True, "maxsources": 4}])
    run_for(src, clock, 1200)  # a public name: 64 s polls, 4 missed replies to replace
    addresses = {r["address"] for r in src.describe()}
    assert len(addresses) == 4
    assert "10.0.1.1:123" not in addresses and "10.0.1.2:123" not in addresses
    assert all(r["state"] == "ok" for r in src.describe())
    assert net.lookups["pool.example"] >= 2  # re-resolved to find the replacements


def test_poll_policy_iburst_then_minpoll_then_doubling() -> None:
    p = PollPolicy(PollConfig(minpoll_s=64, maxpoll_s=1024, burst=4, burst_interval_s=2))
    now, times = 0.0, [0.0]
    for _ in range(20):
        now = p.on_result(now, "accepted")
        times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:3] == [2, 2, 2] and gaps[3] == 64 and max(gaps) <= 1024
    assert gaps == sorted(gaps) and p.interval_s > 64
    assert p.on_result(now, "kod_rate") - now >= 2 * 64
    assert p.request_burst(now) - now == 2 and p.interval_s == 2


@pytest.mark.parametrize("verdict,budget", [(None, 0.0), ("accepted", 0.0), ("step", 0.0),
                                            ("outlier", 64.0), ("step", 64.0)])
def test_default_config_is_polite_to_public_names(verdict: str | None, budget: float) -> None:
    """Must show: with the shipped defaults, counted on a fake resolver and server, no public
    name is queried more than 8 times in the first minute, and no address more often than
    every 64 s after it (simulated hour). Also when, as in the daemon, the engine judges every
    sample, however hostile its verdicts (a step every poll would ask a private server for a
    confirming burst each time) and under a poll budget."""
    cfg = Config({})
    specs = parse_entries(cfg["ntp.servers"])
    clock = Clock()
    net = FakeNet(clock)
    for s in specs:
        net.add(s.host, *(f"203.0.113.{i}" for i in range(1, 9)))
    got: list[Measurement] = []

    def take(m: Measurement) -> None:
        got.append(m)
        if verdict is not None:
            src.judge(m.source, verdict, 1e-3, 1e-4)
    src = NtpSource(NtpSettings(
        servers=specs, minpoll_s=cfg["ntp.minpoll_s"], maxpoll_s=cfg["ntp.maxpoll_s"],
        burst=cfg["ntp.burst"], burst_interval_s=cfg["ntp.burst_interval_s"],
        poll_budget_s=budget or cfg["ntp.poll_budget_s"]), take,
        epoch=EPOCH, monotonic=clock, resolver=net.resolve, transport=net)
    src.judged = verdict is not None
    start = clock.t
    run_for(src, clock, 3600)
    assert got, "the fake pool served nothing"
    for s in specs:
        times = sorted(t for ip in net.names[s.host] for t in net.servers[ip].times)
        assert len([t for t in times if t < start + 60]) <= 8, times[:12]
    for ip, server in net.servers.items():
        late = [t for t in server.times if t >= start + 60]
        gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)
                if b >= start + 60]
        assert all(g >= 64 - 1e-6 for g in gaps), (ip, gaps)  # (float rounding of t + 64)
        assert len(late) <= 3600 // 64 + 1


def test_public_floor_applies_whatever_the_settings() -> None:
    (spec,) = parse_entries(["time.example.org"])
    lim = poll_limits(spec, minpoll_s=0.5, maxpoll_s=2, burst=8, burst_interval_s=0.1)
    assert (lim.minpoll_s, lim.burst, lim.burst_interval_s) == (64, 4, 2)
    (local,) = parse_entries(["127.0.0.1:5"])
    lim = poll_limits(local, minpoll_s=0.5, maxpoll_s=2, burst=8, burst_interval_s=0.1)
    assert (lim.minpoll_s, lim.burst, lim.burst_interval_s) == (0.5, 8, 0.1)


# -- real sockets ----------------------------------------------------------------------------
def test_reply_from_another_port_is_dropped() -> None:
    """Each request is answered twice: first from another port (an off-path injector with the
    right origin timestamp), then genuinely."""
    sp = Responder()
    sp.mangle = lambda reply, _request: [(reply, True), (reply, False)]
    sp.start()
    got: list[Measurement] = []
    try:
        src = NtpSource(NtpSettings(servers=[sp.server], timeout_s=0.5,
                                    burst=1, minpoll_s=1), got.append,
                        read_raw_ns=time.time_ns, epoch=0)
        src.step(time.monotonic())
        src.stop()
    finally:
        sp.stop()
    assert len(got) == 1  # the genuine one; the connected socket never saw the spoof
    r = src.describe()[0]
    assert r["state"] == "ok"


def test_real_chronyd_on_the_time_base(chronyd: Any) -> None:
    """t1/t4 from CLOCK_MONOTONIC_RAW with a whole-second epoch: θ − δ ≈ 0 for a chronyd
    serving this very clock (δ = REALTIME − RAW − epoch)."""
    dead = f"127.0.0.1:{free_udp_port()}"
    epoch = round((time.time_ns() - raw_ns()) / NS)

    def delta() -> tuple[float, int]:
        real, raw = time.time_ns(), raw_ns()
        return (real - raw - epoch * NS) / NS, raw

    got: list[Measurement] = []
    src = NtpSource(NtpSettings(servers=[chronyd.server, dead], timeout_s=0.3, burst=1),
                    got.append, epoch=epoch)
    before, _ = delta()
    try:
        src.step(time.monotonic())
    finally:
        src.stop()
    after, raw = delta()
    assert [m.source for m in got] == [f"ntp:{chronyd.server}"]
    m = got[0]
    # δ read on both sides of the poll: if the host's own time daemon steered REALTIME in
    # between (a CI machine's clock was once stepped 2 ms mid-test), θ lies between them
    assert min(before, after) - 0.001 < m.offset < max(before, after) + 0.001
    assert abs(m.t - raw / NS) < 5  # a raw-clock time, not a wall-clock one
    assert 0 <= m.delay < 0.005 and m.bound >= m.delay / 2
    assert row(src, dead)["state"] == "unreachable"
    assert row(src, chronyd.server)["state"] == "ok"


def test_real_chronyd_thread_delivers_without_blocking(chronyd: Any) -> None:
    got: list[Measurement] = []
    src = NtpSource(NtpSettings(servers=[chronyd.server], minpoll_s=0.2, burst_interval_s=0.2,
                                timeout_s=0.5), got.append, read_raw_ns=time.time_ns, epoch=0)
    src.start()
    try:
        wait_for(lambda: len(got) >= 2, timeout=10, what="two chronyd samples")
    finally:
        src.stop()
    assert src._thread is not None and not src._thread.is_alive()
    assert all(abs(m.offset) < 0.001 for m in got)


def test_daemon_without_the_nts_extra_starts_and_names_it(tmp_path: Any) -> None:
    """pyOpenSSL missing: the daemon still serves, and the log says which extra to install."""
    from support import PYTHONPATH, cli, daemon_process

    block = tmp_path / "block" / "OpenSSL"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'block'}:{PYTHONPATH}"}
    servers = [{"host": "127.0.0.1", "port": free_udp_port(), "nts": True}]
    (tmp_path / "d").mkdir()
    with daemon_process(tmp_path / "d", env=env, ntp__servers=servers) as d:
        wait_for(lambda: "chronotick[nts]" in d.log(), what="the install hint")
        r = cli("--json", "now", socket_path=d.socket)
        assert r.returncode == 0 and '"unsynchronized"' in r.stdout
        assert d.log().count("chronotick[nts]") == 1


# -- the engine's judgement drives the poll policy (the adaptive rules the bench replays) ---------
def _polls_in(seconds: float, judge: tuple[str, float, float] | None, judged: bool) -> int:
    clock = Clock()
    net = FakeNet(clock)
    net.add("127.0.0.1", "127.0.0.1")

    def take(m: Measurement) -> None:
        if judge is not None:
            src.judge(m.source, *judge)
    src, _ = make_source(net, ["127.0.0.1"], maxpoll_s=64.0)
    src.on_measurement = take
    src.judged = judged
    run_for(src, clock, seconds)
    return net.servers["127.0.0.1"].requests


def test_engine_judgement_keeps_the_interval_short_while_predictions_fail() -> None:
    """chrony's rule lengthens the interval after every 4 good samples; judged by the engine,
    a server whose samples keep missing the prediction (residual 5 × the bound) stays at
    minpoll, and one whose samples match it lengthens as chrony's would."""
    missing = _polls_in(300, ("accepted", 5e-4, 1e-4), judged=True)
    holding = _polls_in(300, ("accepted", 0.0, 1e-4), judged=True)
    chrony = _polls_in(300, None, judged=False)
    assert missing >= 250  # every second
    assert holding < 60 and chrony < 60


def test_a_judgement_that_never_comes_does_not_stop_polling() -> None:
    """Judged, but no verdict arrives (the engine dropped the sample): at the provisional time
    the policy hears the source's own outcome, so the schedule is chrony's, lengthening (never
    stuck at the interval it had, which during the initial burst would be 2 s for ever)."""
    assert _polls_in(300, None, judged=True) == _polls_in(300, None, judged=False) < 60


def test_daemon_passes_the_engines_verdicts_to_its_ntp_source(tmp_path: Any) -> None:
    from chronotickd.daemon import Daemon

    d = Daemon(Config({"ntp.servers": ["127.0.0.1:9"], "state_dir": str(tmp_path / "state"),
                       "socket": str(tmp_path / "d.sock")}))
    src = d.ntp_source(d.cfg)
    assert src is not None and src.judged
    d.sources = [src]
    heard: list[tuple[str, str, float, float]] = []
    src.judge = lambda *a: heard.append(a)  # type: ignore[method-assign]
    m = Measurement.from_ntp(1.0, 1e-3, 1e-4, source="ntp:127.0.0.1:9")
    d._judge(m, d.engine.add(m))
    assert heard == [("ntp:127.0.0.1:9", "accepted", *d.engine.poll_feedback(m.source))]
