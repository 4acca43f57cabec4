"""NTP source that behaves like chrony's client: per-address tracks, polite polling,
spoof-proof replies, optional NTS. Runs in its own thread; request serving never waits.

- Every ``ntp.servers`` entry resolves (ntp_pool.py) to tracks, one per address: a pool
  name to up to ``maxsources`` addresses, re-resolved every ``resolve_interval_s`` and when
  an address is replaced (unreachable for ``REPLACE_UNREACHABLE`` polls, falseticker for
  ``REPLACE_FALSETICKER`` selections, or a DENY/RSTR kiss).
- Each track has its own ``PollPolicy`` (core/poll_policy.py): iburst, then minpoll …
  maxpoll; public names never faster than 64 s (ntp_pool.poll_limits).
- Each request goes out on its own connected UDP socket (a random source port) with 64
  random bits as transmit timestamp. A datagram counts only if it comes from the address
  and port asked, parses, and echoes those bits as origin; anything else is dropped,
  counted by reason, and shown in ``sources``.
- t1/t4 are read from the injected ``read_raw_ns`` (CLOCK_MONOTONIC_RAW in the daemon) and
  θ/δ computed in integer ns (ntp_packet.exchange) against ``epoch``.
- NTS sources (nts.py) never use an unauthenticated reply.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from chronotickd.core.measurement import Measurement
from chronotickd.core.ntp_select import select_truechimers
from chronotickd.core.poll_policy import OUTCOMES, PollConfig, PollPolicy
from chronotickd.sources import ntp_packet as pkt
from chronotickd.sources import nts
from chronotickd.sources.ntp_pool import (
    Address,
    Resolver,
    ServerSpec,
    format_address,
    parse_entry,
    poll_limits,
    system_resolver,
)

log = logging.getLogger("chronotickd.ntp")

KOD_STOP = {"DENY", "RSTR"}  # the server asks us to stop
KOD_SLOW = {"RATE"}  # the server asks us to poll less often
MAX_DISPERSION_S = 16.0  # RFC 5905 MAXDISP: anything beyond is nonsense
REPLACE_UNREACHABLE = 4  # polls in a row without a reply before a pool address is replaced
REPLACE_FALSETICKER = 4  # consecutive falseticker verdicts before a pool address is replaced
RESOLVE_RETRY_S = 60.0  # after a failed resolution or a replacement
SELECT_DRIFT_PPM = 100.0  # an older sample's interval widens this fast for selection
HAS_LEAP = "leap" in {f.name for f in fields(Measurement)}


def raw_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)


def parse_server(spec: str) -> tuple[str, int]:
    """'host' → (host, 123); 'host:port' → (host, port); '[v6]:port' supported."""
    s = parse_entry(spec)
    return s.host, s.port


@dataclass
class NtpSettings:
    servers: list[Any]  # ntp.servers entries (strings or mappings) or ServerSpecs
    timeout_s: float = 1.0
    minpoll_s: float = 64.0
    maxpoll_s: float = 1024.0
    burst: int = 4
    burst_interval_s: float = 2.0
    max_delay_s: float = 0.5
    max_root_distance_s: float = 3.0
    resolve_interval_s: float = 3600.0
    # mean seconds between polls of one address under a poll budget (PollConfig.budget_s); 0:
    # none (chrony's lengthening). Never below the address's minpoll.
    poll_budget_s: float = 0.0


def check_reply(p: pkt.NtpPacket, delay_s: float, settings: NtpSettings) -> str | None:
    """Why this (origin-matched, non-KoD) reply must not be used, or None."""
    if p.leap == pkt.LEAP_UNSYNC or p.stratum >= 16:
        return "server unsynchronized (leap indicator 3 or stratum 16)"
    if p.transmit_ts == 0 or p.receive_ts == 0:
        return "reply without receive or transmit timestamp"
    if delay_s < 0 or delay_s > settings.max_delay_s:
        limit_ms = settings.max_delay_s * 1e3
        return f"round trip {delay_s * 1e3:.3f} ms outside [0, {limit_ms:g}] ms"
    if p.root_delay_s > MAX_DISPERSION_S or p.root_dispersion_s > MAX_DISPERSION_S:
        return "absurd root delay or dispersion"
    distance = p.root_delay_s / 2 + p.root_dispersion_s
    if distance > settings.max_root_distance_s:
        return f"root distance {distance:.3f} s over {settings.max_root_distance_s:g} s"
    return None


# -- the network, behind an interface tests replace ------------------------------------------
@dataclass
class Reply:
    """What one exchange gave: the accepted datagram's verdict, t1/t4 (raw ns), drops."""

    t1_ns: int = 0
    t4_ns: int = 0
    accepted: Any = None  # whatever ``check`` returned for the datagram it accepted
    dropped: list[str] = field(default_factory=list)
    error: str | None = None  # no reply: why (timeout, ICMP error, ...)


Check = Callable[[bytes], tuple[Any, str | None]]  # (accepted or None, drop reason)


class Transport(Protocol):
    def exchange(self, address: Address, payload: bytes, timeout: float,
                 check: Check) -> Reply: ...


class UdpTransport:
    """One connected UDP socket per request: the kernel filters other peers, the source
    port is fresh, and the peer is checked again explicitly."""

    def __init__(self, read_raw_ns: Callable[[], int] = raw_ns) -> None:
        self.read_raw_ns = read_raw_ns

    def exchange(self, address: Address, payload: bytes, timeout: float,
                 check: Check) -> Reply:
        family, sockaddr = address
        reply = Reply()
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                peer = s.getpeername()
                deadline = time.monotonic() + timeout
                reply.t1_ns = self.read_raw_ns()
                s.send(payload)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        reply.error = f"no reply within {timeout:g} s"
                        return reply
                    s.settimeout(left)
                    try:
                        data, src = s.recvfrom(pkt.MAX_PACKET + 1)
                    except TimeoutError:
                        reply.error = f"no reply within {timeout:g} s"
                        return reply
                    t4 = self.read_raw_ns()
                    if src[:2] != peer[:2]:
                        reply.dropped.append("wrong source address")
                        continue
                    accepted, why = check(data)
                    if why is not None:
                        reply.dropped.append(why)
                        continue
                    reply.t4_ns, reply.accepted = t4, accepted
                    return reply
        except OSError as exc:
            reply.error = exc.strerror or type(exc).__name__
            return reply


# -- per-address state -------------------------------------------------------------------------
@dataclass
class Track:
    """One server address: its poll policy and what ``sources`` shows about it."""

    name: str
    spec: ServerSpec
    address: Address
    policy: PollPolicy
    burst: int
    state: str = "init"  # init | ok | falseticker | rejected | unreachable | stopped
    reason: str = ""
    last_offset: float | None = None
    last_delay: float | None = None
    last_t: float | None = None  # raw (time-base) seconds of the last accepted sample
    stratum: int | None = None
    leap: int | None = None  # the last reply's leap indicator (0 none, 1 +1 s, 2 −1 s, 3 alarm)
    root_delay: float | None = None  # of the last reply (tracking, metrics)
    root_dispersion: float | None = None
    reach: int = 0  # chrony's reach register: one bit per poll, newest lowest, 1 = usable
    polls: int = 0
    good: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    next_poll: float = 0.0
    unreach_run: int = 0
    false_run: int = 0
    authenticated: bool = False
    keys: nts.NtsKeys | None = None
    nts_ke: int = 0  # NTS-KE handshakes tried
    nts_ke_failed: int = 0  # ... and failed (untrusted certificate, wrong name, refused)
    logged: str = ""  # last reason logged, so a persistent fault logs one line
    latest: Measurement | None = None  # the last accepted sample, for selection
    latest_mono: float = 0.0
    # a poll whose sample the engine is judging (``NtpSource.judge``): its monotonic time and
    # the source's own outcome, used if no judgement comes
    awaiting: float | None = None
    awaiting_outcome: str = ""

    def settle(self, outcome: str, residual_s: float = 0.0, bound_s: float = 0.0) -> None:
        """The awaited poll's outcome reaches the policy, which sets the next poll time."""
        assert self.awaiting is not None
        self.next_poll = self.policy.on_result(self.awaiting, outcome, residual_s, bound_s)
        self.awaiting = None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name, "kind": "ntp", "address": format_address(self.address),
            "server": self.spec.spec, "pool": self.spec.pool, "nts": self.spec.nts,
            "authenticated": self.authenticated, "state": self.state, "reason": self.reason,
            "last_offset": self.last_offset, "last_delay": self.last_delay,
            "last_t": self.last_t, "stratum": self.stratum, "leap": self.leap,
            "root_delay": self.root_delay, "root_dispersion": self.root_dispersion,
            "reach": self.reach, "polls": self.polls, "good": self.good,
            "dropped": sum(self.dropped.values()),
            "dropped_by": dict(self.dropped), "poll_interval_s": self.policy.interval_s,
            "next_poll_in_s": round(max(0.0, self.next_poll - now), 3),
            **({"nts_ke": self.nts_ke, "nts_ke_failed": self.nts_ke_failed,
                "cookies": len(self.keys.cookies) if self.keys else 0} if self.spec.nts else {}),
        }


@dataclass
class Entry:
    """One configured server or pool and the addresses it currently has."""

    spec: ServerSpec
    tracks: list[Track] = field(default_factory=list)
    excluded: set[Address] = field(default_factory=set)  # replaced addresses
    next_resolve: float = 0.0
    resolved_once: bool = False
    error: str = ""
    logged_error: str = ""  # a resolution error is logged once until it changes

    @property
    def target(self) -> int:
        return self.spec.maxsources if self.spec.pool else 1


@dataclass
class Outcome:
    """What polling one track gave (computed in a worker thread, applied in the loop)."""

    outcome: str  # PollPolicy outcome
    measurement: Measurement | None = None
    state: str = ""
    reason: str = ""
    stop: bool = False
    dropped: list[str] = field(default_factory=list)  # datagrams refused, by reason


class NtpSource:
    """All NTP tracks; ``on_measurement`` receives the samples that survive selection."""

    kind = "ntp"

    def __init__(
        self,
        settings: NtpSettings,
        on_measurement: Callable[[Measurement], None],
        read_raw_ns: Callable[[], int] = raw_ns,
        epoch: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
        resolver: Resolver = system_resolver,
        transport: Transport | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.on_measurement = on_measurement
        self.read_raw_ns = read_raw_ns
        self.epoch = int(epoch)
        self.monotonic = monotonic
        self.resolver = resolver
        self.transport: Transport = transport or UdpTransport(read_raw_ns)
        self.wall = wall
        self.entries = [Entry(s if isinstance(s, ServerSpec) else parse_entry(s))
                        for s in settings.servers]
        self.started = monotonic()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ntp-poll")
        self._lock = threading.Lock()  # tracks change in the loop; describe() reads them
        self._stop = threading.Event()
        self._wake = threading.Event()  # poll_now(): end the current wait early
        self._thread: threading.Thread | None = None
        self._warned_unusable = False
        # set by whoever feeds the samples to the engine and passes its verdicts to ``judge``
        self.judged = False
        self._judgements: dict[str, tuple[str, float, float]] = {}  # name → (verdict, res, bound)

    @property
    def tracks(self) -> list[Track]:
        return [t for e in self.entries for t in e.tracks]

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ntp-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s * 3 + 2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def warmup_progress(self) -> float:
        """Share of the initial bursts done (1.0 once every address has had its burst)."""
        tracks = self.tracks
        if not tracks:
            return 1.0 if all(e.resolved_once for e in self.entries) else 0.0
        return min(1.0, min(t.polls / t.burst for t in tracks))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wake = self.step(self.monotonic())
            except Exception:  # a bug here must not kill the source thread
                log.exception("NTP polling failed unexpectedly; retrying in 1 s")
                wake = self.monotonic() + 1.0
            self._wake.wait(max(0.0, min(wake - self.monotonic(), 60.0)))
            self._wake.clear()

    def poll_now(self) -> None:
        """Poll every address at once (admin ``poll_now``), except stopped or kissed ones."""
        for t in self.tracks:
            if t.state != "stopped" and "RATE" not in t.reason:
                t.next_poll = 0.0
        self._wake.set()

    def judge(self, name: str, verdict: str, residual_s: float, bound_s: float) -> None:
        """The engine's verdict on a sample this source handed on (any thread): ``accepted``,
        ``outlier`` or ``step``, its residual against the prediction served before it and the
        bound that residual is judged against. The track's poll policy hears it before it
        chooses the next poll (the adaptive rules of core/poll_policy.py, as replayed by the
        accuracy bench)."""
        with self._lock:
            self._judgements[name] = (verdict, residual_s, bound_s)
        self._wake.set()

    def _settle(self, now: float) -> None:
        """Tell each awaiting track's policy how its last poll went: the engine's judgement
        when it came, else, once the provisional time is reached, the source's own outcome."""
        with self._lock:
            got, self._judgements = self._judgements, {}
        for t in self.tracks:
            if t.awaiting is None:
                continue
            j = got.get(t.name)
            if j is not None:
                verdict, residual, bound = j
                if verdict not in OUTCOMES:  # e.g. set aside near a leap second
                    verdict = "accepted"
                t.settle(verdict, residual, bound)
            elif t.next_poll <= now:
                t.settle(t.awaiting_outcome)

    # -- one scheduling step --------------------------------------------------------------
    def step(self, now: float) -> float:
        """Resolve what is due, poll the due tracks concurrently, select, replace; return
        the monotonic time of the next thing to do."""
        self._settle(now)
        for e in self.entries:
            if e.next_resolve <= now:
                self._resolve(e, now)
        due = [t for t in self.tracks if t.state != "stopped" and t.next_poll <= now]
        outcomes = list(self._pool.map(self._poll, due)) if len(due) > 1 else (
            [self._poll(due[0])] if due else [])
        done = self.monotonic()
        for t, out in zip(due, outcomes, strict=True):
            self._apply(t, out, done)
        if due:
            handed_on = self._select(due, done)
            for t in due:  # nothing for the engine to judge: the policy hears the source's view
                if t.awaiting is not None and t.name not in handed_on:
                    t.settle("outlier" if t.state == "falseticker" else t.awaiting_outcome)
            self._settle(done)  # verdicts given while the samples were handed on
            self._replace(done)
            self._log_usable(due)
        times = [t.next_poll for t in self.tracks if t.state != "stopped"]
        times += [e.next_resolve for e in self.entries]
        return min(times, default=now + 60.0)

    def _resolve(self, e: Entry, now: float) -> None:
        s = self.settings
        try:
            addrs = self.resolver(e.spec.host, e.spec.port)
            e.error = ""
        except (OSError, UnicodeError) as exc:
            addrs = []
            e.error = f"cannot resolve {e.spec.host}: {getattr(exc, 'strerror', None) or exc}"
        e.resolved_once = True
        have = {t.address for t in e.tracks}
        fresh = [a for a in addrs if a not in have and a not in e.excluded]
        if not fresh and len(e.tracks) < e.target and e.excluded:
            e.excluded.clear()  # every address was replaced once: try them again
            fresh = [a for a in addrs if a not in have]
        n_addr = min(e.target, max(1, len(addrs)))
        with self._lock:
            for a in fresh[: e.target - len(e.tracks)]:
                lim = poll_limits(e.spec, s.minpoll_s, s.maxpoll_s, s.burst,
                                  s.burst_interval_s, n_addr)
                name = f"ntp:{e.spec.spec}/{format_address(a)}" if e.spec.pool \
                    else f"ntp:{e.spec.spec}"
                budget = max(s.poll_budget_s, lim.minpoll_s) if s.poll_budget_s else None
                e.tracks.append(Track(name, e.spec, a, PollPolicy(PollConfig(
                    lim.minpoll_s, lim.maxpoll_s, lim.burst, lim.burst_interval_s,
                    budget_s=budget, confirm_bursts=not e.spec.public)),
                    lim.burst, next_poll=now))
        full = len(e.tracks) >= e.target
        e.next_resolve = now + (s.resolve_interval_s if full and not e.error
                                else RESOLVE_RETRY_S)
        if e.error and e.error != e.logged_error:
            log.warning("NTP server %s: %s; retrying every %g s", e.spec.spec, e.error,
                        RESOLVE_RETRY_S)
        e.logged_error = e.error

    # -- one poll (worker thread) ------------------------------------------------------------
    def _poll(self, t: Track) -> Outcome:
        try:
            return self._poll_inner(t)
        except Exception as exc:  # never lose the loop to one server
            log.exception("NTP poll of %s failed unexpectedly", t.name)
            return Outcome("no_reply", state="unreachable", reason=f"internal error: {exc}")

    def _poll_inner(self, t: Track) -> Outcome:
        s = self.settings
        t.polls += 1
        req = None
        if t.spec.nts:
            problem = self._ensure_keys(t)
            if problem:
                return Outcome("no_reply", state="rejected", reason=problem)
        xmt = pkt.random_timestamp()
        header = pkt.client_request(xmt)
        if t.spec.nts:
            assert t.keys is not None
            req = nts.build_request(header, t.keys)
        payload = req.packet if req is not None else header
        nak = [False]

        def check(data: bytes) -> tuple[Any, str | None]:
            try:
                p = pkt.decode(data)
            except pkt.NtpParseError:
                return None, "malformed packet"
            if p.origin_ts != xmt:
                return None, "origin timestamp mismatch"
            if p.mode != pkt.MODE_SERVER or p.version not in (3, 4):
                return None, "not a server reply (mode/version)"
            if req is None:
                return p, None
            if nts.is_nak(data, req.uid):
                nak[0] = True
                return p, None
            try:
                cookies = nts.verify_reply(data, req.uid, t.keys.s2c if t.keys else b"")
            except nts.NtsError as exc:
                return None, str(exc)
            return (p, cookies), None

        r = self.transport.exchange(t.address, payload, s.timeout_s, check)
        out = self._judge(t, r, nts_req=req, nak=nak[0])
        out.dropped = r.dropped
        return out

    def _judge(self, t: Track, r: Reply, nts_req: nts.NtsRequest | None,
               nak: bool) -> Outcome:
        """What the exchange's accepted datagram (if any) means for this track."""
        s = self.settings
        if r.accepted is None:
            return Outcome("no_reply", state="unreachable", reason=r.error or "no reply")
        if nak:
            t.keys = None  # the server no longer knows our cookies: NTS-KE next poll
            return Outcome("no_reply", state="rejected",
                           reason="NTS NAK: cookies refused; redoing NTS-KE")
        if nts_req is not None:
            p, cookies = r.accepted
            assert t.keys is not None
            t.keys.cookies.extend(cookies[: nts.MAX_COOKIES - len(t.keys.cookies)])
        else:
            p = r.accepted
        t.stratum, t.leap = p.stratum, p.leap
        t.root_delay, t.root_dispersion = p.root_delay_s, p.root_dispersion_s
        if p.stratum == 0:
            code = p.kiss_code
            if code in KOD_STOP:
                return Outcome("no_reply", state="stopped",
                               reason=f"kiss-o'-death {code}", stop=True)
            if code in KOD_SLOW:
                return Outcome("kod_rate", state="rejected", reason=f"kiss-o'-death {code}")
            return Outcome("no_reply", state="rejected", reason=f"kiss-o'-death {code or '?'}")
        ex = pkt.exchange(r.t1_ns, r.t4_ns, p.receive_ts, p.transmit_ts, self.epoch)
        problem = check_reply(p, ex.delay_ns / 1e9, s)
        if problem:
            return Outcome("outlier", state="rejected", reason=problem)
        m = Measurement.from_ntp(ex.t_raw_ns / 1e9, ex.offset_ns / 1e9, ex.delay_ns / 1e9,
                                 p.root_delay_s, p.root_dispersion_s, source=t.name,
                                 stratum=p.stratum)
        if HAS_LEAP:  # the engine knows leap indicators: carry the server's
            m = replace(m, leap=p.leap)
        return Outcome("accepted", measurement=m, state="ok")

    def _ensure_keys(self, t: Track) -> str | None:
        """NTS-KE when there are no keys or cookies; the error text when it fails."""
        if t.keys is not None and t.keys.cookies:
            return None
        t.keys, t.authenticated = None, False
        t.nts_ke += 1
        try:
            keys = nts.key_exchange(t.spec.host, t.spec.nts_port, t.spec.port,
                                    max(self.settings.timeout_s * 3, 2.0), t.spec.trusted_ca)
        except nts.NtsError as exc:
            t.nts_ke_failed += 1
            return f"{exc}; NTS source not used"
        if (keys.server, keys.port) != (t.spec.host, t.address[1][1]):
            try:
                addrs = self.resolver(keys.server, keys.port)
            except (OSError, UnicodeError) as exc:
                return f"cannot resolve NTS server {keys.server}: {exc}; NTS source not used"
            if not addrs:
                return f"NTS server {keys.server} has no address; NTS source not used"
            t.address = addrs[0]
        t.keys = keys
        return None

    # -- results (loop thread) -------------------------------------------------------------
    def _apply(self, t: Track, out: Outcome, now: float) -> None:
        with self._lock:  # describe() copies the counters from another thread
            for why in out.dropped:
                t.dropped[why] += 1
        t.state, t.reason = out.state, out.reason
        t.reach = ((t.reach << 1) | (out.measurement is not None)) & 0xFF
        if out.measurement is not None:
            m = out.measurement
            t.latest, t.latest_mono = m, now
            t.last_offset, t.last_delay, t.last_t = m.offset, m.delay, m.t
            t.unreach_run = 0
            t.authenticated = t.spec.nts
        elif out.state == "unreachable":
            t.unreach_run += 1
        if out.state in ("rejected", "stopped") and t.spec.nts:
            t.authenticated = False
        t.awaiting = None
        if out.stop:
            t.next_poll = float("inf")
        elif self.judged and out.measurement is not None:
            # the engine judges the sample (``judge``, ``_settle``); until then the current
            # interval stands
            t.awaiting, t.awaiting_outcome = now, out.outcome
            t.next_poll = now + t.policy.interval_s
        else:
            t.next_poll = t.policy.on_result(now, out.outcome)
        if out.reason and out.reason != t.logged and out.state in ("stopped", "rejected") and (
                out.stop or t.spec.nts or "kiss" in out.reason):
            if out.stop:
                log.warning("NTP server %s sent kiss-o'-death %s: no longer polled", t.name,
                            out.reason.split()[-1])
            else:
                log.warning("NTP server %s rejected: %s", t.name, out.reason)
            t.logged = out.reason  # the same reason again stays quiet
        elif out.state == "ok":
            t.logged = ""

    def _select(self, due: list[Track], now: float) -> set[str]:
        """Marzullo over each track's latest sample (older ones widened by their age);
        the new samples that survive go to the engine. Returns the names of the tracks whose
        sample went."""
        fresh: list[Measurement] = []
        owner: dict[str, Track] = {}
        for t in self.tracks:
            m = t.latest
            if m is None or t.state not in ("ok", "falseticker") or \
                    now - t.latest_mono > 2 * t.policy.interval_s + self.settings.timeout_s:
                continue
            age = now - t.latest_mono
            if age > 0:
                m = replace(m, bound=m.bound + age * SELECT_DRIFT_PPM * 1e-6)
            fresh.append(m)
            owner[m.source] = t
        if not fresh:
            return set()
        sel = select_truechimers(fresh)
        new = {t.name for t in due if t.state == "ok"}
        for m in sel.falsetickers:
            t = owner[m.source]
            t.state = "falseticker"
            t.reason = "interval disjoint from the majority" if sel.survivors else (
                "no majority among servers")
            if m.source in new:
                t.false_run += 1
        handed_on: set[str] = set()
        for m in sel.survivors:
            t = owner[m.source]
            t.state, t.reason = "ok", ""
            if m.source in new:
                t.false_run = 0
                t.good += 1
                assert t.latest is not None
                self.on_measurement(t.latest)
                handed_on.add(t.name)
        return handed_on

    def _replace(self, now: float) -> None:
        """Drop pool addresses that stay unreachable, tick false or said DENY; re-resolve."""
        for e in self.entries:
            if not e.spec.pool:
                continue
            bad = [t for t in e.tracks if t.state == "stopped"
                   or t.unreach_run >= REPLACE_UNREACHABLE
                   or t.false_run >= REPLACE_FALSETICKER]
            if not bad:
                continue
            with self._lock:
                for t in bad:
                    log.info("NTP pool %s: replacing %s (%s)", e.spec.spec,
                             format_address(t.address), t.reason or t.state)
                    e.tracks.remove(t)
                    e.excluded.add(t.address)
            e.next_resolve = min(e.next_resolve, now)

    def _log_usable(self, due: list[Track]) -> None:
        usable = any(t.state == "ok" for t in self.tracks)
        if not usable and not self._warned_unusable:
            # a reason already logged on its own line is not repeated here
            why = [f"{t.name[4:]}: {t.state if t.logged == t.reason else t.reason}"
                   for t in self.tracks]
            why += [f"{e.spec.spec}: {e.error}" for e in self.entries if e.error]
            log.warning("no NTP server usable (%s); serving the system clock as "
                        "unsynchronized", "; ".join(why))
            self._warned_unusable = True
        elif usable and self._warned_unusable:
            log.info("NTP reachable again")
            self._warned_unusable = False

    def describe(self) -> list[dict[str, Any]]:
        now = self.monotonic()
        with self._lock:
            rows = [t.as_dict(now) for t in self.tracks]
            for e in self.entries:
                if not e.tracks:
                    rows.append({
                        "name": f"ntp:{e.spec.spec}", "kind": "ntp", "address": None,
                        "server": e.spec.spec, "pool": e.spec.pool, "nts": e.spec.nts,
                        "authenticated": False,
                        "state": "unreachable" if e.resolved_once else "init",
                        "reason": e.error or ("no address" if e.resolved_once else ""),
                        "polls": 0, "good": 0, "dropped": 0})
        return rows
