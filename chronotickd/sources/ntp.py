"""NTP source: polls several servers concurrently with ntplib, filters samples, rejects
falsetickers per round, and hands survivors to the engine. Runs in its own thread; request
serving never waits on it.

Time base (chronotickd/core/timebase.py): ntplib timestamps the exchange with REALTIME, so the
source reads both clocks just before and just after each request and converts ntplib's offset
into θ = reference − (raw + epoch) = offset + δ, at ``t`` = the raw midpoint. If δ moved during
the exchange (another daemon slewing or stepping REALTIME), the measurement's bound grows by
half that change: the instant ntplib read REALTIME is not known better than that.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import ntplib

from chronotickd.core.measurement import Measurement
from chronotickd.core.ntp_select import select_truechimers
from chronotickd.core.timebase import ClockReading
from chronotickd.sources import clocks

log = logging.getLogger("chronotickd.ntp")

KOD_STOP = {"DENY", "RSTR"}  # the server asks us to stop
KOD_SLOW = {"RATE"}  # the server asks us to poll less often
MAX_DISPERSION_S = 16.0  # RFC 5905 MAXDISP: anything beyond is nonsense


def parse_server(spec: str) -> tuple[str, int]:
    """'host' → (host, 123); 'host:port' → (host, port); '[v6]:port' supported."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 123
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 123


@dataclass
class ServerState:
    """What ``sources`` shows about one NTP server."""

    spec: str
    host: str
    port: int
    state: str = "init"  # init | ok | falseticker | rejected | unreachable | stopped
    reason: str = ""
    last_offset: float | None = None
    last_delay: float | None = None
    last_t: float | None = None
    stratum: int | None = None
    polls: int = 0
    good: int = 0
    backoff: float = 1.0
    next_poll: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": f"ntp:{self.spec}", "kind": "ntp", "state": self.state,
            "reason": self.reason, "last_offset": self.last_offset,
            "last_delay": self.last_delay, "last_t": self.last_t, "stratum": self.stratum,
            "polls": self.polls, "good": self.good,
        }


@dataclass
class NtpSettings:
    servers: list[str]
    timeout_s: float = 1.0
    warmup_s: float = 180.0
    warmup_interval_s: float = 1.0
    interval_s: float = 10.0
    max_delay_s: float = 0.5
    max_root_distance_s: float = 3.0


def kod_code(resp: Any) -> str:
    """The 4-letter Kiss-o'-Death code of a stratum-0 reply."""
    ref = int(resp.ref_id)
    return "".join(chr((ref >> s) & 0xFF) for s in (24, 16, 8, 0)).strip("\x00 ")


def check_response(resp: Any, settings: NtpSettings) -> str | None:
    """Why this ntplib response must not be used, or None when it is fine."""
    if resp.stratum == 0:
        return f"kiss-o'-death {kod_code(resp) or '?'}"
    if resp.leap == 3 or resp.stratum >= 16:
        return "server unsynchronized (leap indicator 3 or stratum 16)"
    values = (resp.offset, resp.delay, resp.root_delay, resp.root_dispersion)
    if not all(math.isfinite(v) for v in values):
        return "non-finite values in reply"
    if resp.delay < 0 or resp.delay > settings.max_delay_s:
        limit_ms = settings.max_delay_s * 1e3
        return f"round trip {resp.delay * 1e3:.3f} ms outside [0, {limit_ms:g}] ms"
    if not 0 <= resp.root_delay <= MAX_DISPERSION_S or not 0 <= resp.root_dispersion <= 16:
        return "absurd root delay or dispersion"
    distance = resp.root_delay / 2 + resp.root_dispersion
    if distance > settings.max_root_distance_s:
        return f"root distance {distance:.3f} s over {settings.max_root_distance_s:g} s"
    return None


def on_time_base(resp: Any, before: ClockReading, after: ClockReading, epoch: float,
                 source: str) -> Measurement:
    """ntplib's REALTIME-based reply as a measurement of θ against raw (module docstring)."""
    d1, d4 = before.delta(epoch), after.delta(epoch)
    m = Measurement.from_ntp(
        (before.raw + after.raw) / 2.0, resp.offset + (d1 + d4) / 2.0, resp.delay,
        resp.root_delay, resp.root_dispersion, source=source, stratum=resp.stratum,
        leap=int(getattr(resp, "leap", 0) or 0),
    )
    widen = abs(d4 - d1) / 2.0 + max(before.width, after.width) / 2.0
    return replace(m, bound=m.bound + widen) if widen else m


class NtpSource:
    """Polls all servers each round; ``on_measurement`` receives the survivors."""

    kind = "ntp"

    def __init__(
        self,
        settings: NtpSettings,
        on_measurement: Callable[[Measurement], None],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        epoch: float | None = None,
        read_clock: Callable[[], ClockReading] = clocks.read,
    ) -> None:
        self.settings = settings
        self.on_measurement = on_measurement
        self.clock = clock
        self.monotonic = monotonic
        # the engine's (the daemon passes it; alone: this host's): θ = ref − (raw + epoch)
        self.epoch = clocks.start_epoch() if epoch is None else epoch
        self.read_clock = read_clock
        self.servers = [ServerState(s, *parse_server(s)) for s in settings.servers]
        self.started = monotonic()
        self.rounds = 0
        self._client = ntplib.NTPClient()
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(self.servers))),
                                        thread_name_prefix="ntp-poll")
        self._stop = threading.Event()
        self._wake = threading.Event()  # poll_now(): end the current wait early
        self._thread: threading.Thread | None = None
        self._warned_unreachable = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ntp-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def warmup_progress(self) -> float:
        if self.settings.warmup_s <= 0:
            return 1.0
        return min(1.0, (self.monotonic() - self.started) / self.settings.warmup_s)

    def interval(self) -> float:
        s = self.settings
        return s.warmup_interval_s if self.warmup_progress() < 1.0 else s.interval_s

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self.monotonic()
            try:
                self.poll_round()
            except Exception:  # a bug here must not kill the source thread
                log.exception("NTP round failed unexpectedly; retrying next interval")
            self._wake.wait(max(0.0, self.interval() - (self.monotonic() - began)))
            self._wake.clear()

    def poll_now(self) -> None:
        """Poll every server at once (admin ``poll_now``), except those that sent a KoD."""
        for server in self.servers:
            if server.state != "stopped" and server.backoff <= 1.0:
                server.next_poll = 0.0
        self._wake.set()

    # -- one round ---------------------------------------------------------------------
    def _query(self, server: ServerState) -> Measurement | None:
        server.polls += 1
        try:
            before = self.read_clock()
            resp = self._client.request(server.host, port=server.port, version=4,
                                        timeout=self.settings.timeout_s)
            after = self.read_clock()
        except (ntplib.NTPException, OSError) as exc:
            server.state, server.reason = "unreachable", str(exc) or type(exc).__name__
            return None
        server.stratum = resp.stratum
        if resp.stratum == 0:
            code = kod_code(resp)
            server.state, server.reason = "rejected", f"kiss-o'-death {code or '?'}"
            if code in KOD_STOP:
                server.state = "stopped"
                log.warning("NTP server %s sent kiss-o'-death %s: no longer polled",
                            server.spec, code)
            else:
                server.backoff = min(server.backoff * 2, 64)
            return None
        problem = check_response(resp, self.settings)
        if problem:
            server.state, server.reason = "rejected", problem
            return None
        real_t = (resp.orig_time + resp.dest_time) / 2.0
        server.last_offset, server.last_delay, server.last_t = resp.offset, resp.delay, real_t
        server.backoff = max(1.0, server.backoff / 2)
        return on_time_base(resp, before, after, self.epoch, f"ntp:{server.spec}")

    def poll_round(self) -> list[Measurement]:
        """Poll every due server concurrently; send survivors on. Returns the survivors."""
        now = self.monotonic()
        due = [s for s in self.servers if s.state != "stopped" and s.next_poll <= now]
        results = list(self._pool.map(self._query, due))
        for s in due:
            s.next_poll = now + self.interval() * (s.backoff - 1.0)
        good = [m for m in results if m is not None]
        self.rounds += 1
        if not good:
            if due and not self._warned_unreachable:
                log.warning("no NTP server usable (%s); serving the system clock as %s",
                            "; ".join(f"{s.spec}: {s.reason}" for s in due), "unsynchronized")
                self._warned_unreachable = True
            return []
        if self._warned_unreachable:
            log.info("NTP reachable again")
            self._warned_unreachable = False
        selection = select_truechimers(good)
        by_source = {f"ntp:{s.spec}": s for s in due}
        for m in selection.falsetickers:
            server = by_source[m.source]
            server.state = "falseticker"
            server.reason = "interval disjoint from the majority" if selection.survivors else (
                "no majority among servers")
        for m in selection.survivors:
            server = by_source[m.source]
            server.state, server.reason = "ok", ""
            server.good += 1
            self.on_measurement(m)
        return list(selection.survivors)

    def describe(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.servers]
