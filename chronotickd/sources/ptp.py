"""PTP source: reads ptp4l's view of its master through linuxptp's ``pmc`` (and the PHC).

Runs in its own thread; every ``poll_interval_s`` it runs::

    pmc -u -b 0 -s UDS 'GET TIME_STATUS_NP' 'GET PORT_DATA_SET' 'GET CURRENT_DATA_SET' \
        'GET PARENT_DATA_SET' 'GET TIME_PROPERTIES_DATA_SET'

as a subprocess with a timeout (request serving never waits on it), and, when
``ptp.phc_device`` is set, reads the PHC against the system clock itself, through a read-only
descriptor (chronotickd/sources/phc.py: PTP_SYS_OFFSET_EXTENDED, PTP_SYS_OFFSET or
clock_gettime; phc_ctl is not used: it opens the PHC read-write). One new Sync (a new
``ingress_time``) gives one ``Measurement(kind="ptp")``.

Offsets (our convention: ``offset = reference − system``; ptp4l's ``master_offset`` is
``own clock − master``):

- no PHC (ptp4l timestamps in software and its clock *is* the system clock; ptp4l already
  converts a PTP-timescale master to UTC): ``offset = −master_offset``, measured at
  ``t = ingress_time``.
- PHC: ``offset = (PHC − system) − master_offset − UTC shift`` where the shift is the
  master's ``currentUtcOffset`` when it runs the PTP (TAI) timescale; ``t`` is the system
  time of the PHC reading.

Time base (chronotickd/core/timebase.py): ptp4l's offsets are against REALTIME (at the Sync's
ingress, or at the PHC reading). They become θ = reference − (raw + epoch) by adding δ
read by the source: the raw/real pair around the PHC reading, or for ingress the δ of this
poll and the previous one (the ingress lies between them); a δ change between the two reads
widens the bound by half of it. Leap announcements (leap61/leap59) travel in the measurement.

Liveness comes from ptp4l itself, not from the offset (``TIME_STATUS_NP`` keeps showing the
last offset after the master dies): the port must be SLAVE or UNCALIBRATED (``free_running
1`` keeps it UNCALIBRATED while offsets stay valid), a grandmaster present, and the last Sync
(``ingress_time``) younger than ``STALE_SYNCS`` sync intervals. Otherwise the source stops
feeding the engine and reports itself unusable with the reason (``health()``); the engine
then fails over. The bound is PTP's own (see ``PtpSource.bound`` and docs/ptp.md).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import statistics
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chronotickd.core.measurement import Measurement
from chronotickd.core.timebase import ClockReading
from chronotickd.sources import clocks
from chronotickd.sources.phc import PhcReader
from chronotickd.sources.pmc_parse import (
    ACCURACY_UNKNOWN,
    MEASURING_STATES,
    PmcParseError,
    PtpStatus,
    parse_pmc_status,
    pmc_failure,
)
from chronotickd.sources.ptp_quality import GmPolicy, GmQuality, assess

log = logging.getLogger("chronotickd.ptp")

PMC_QUERIES = ("GET TIME_STATUS_NP", "GET PORT_DATA_SET", "GET CURRENT_DATA_SET",
               "GET PARENT_DATA_SET", "GET TIME_PROPERTIES_DATA_SET")
STALE_SYNCS = 2.5  # Syncs missed (in sync intervals) before the master counts as silent
STALE_FLOOR_S = 1.0  # ... and never less than this
SPREAD_WINDOW = 16  # recent offsets whose spread enters the bound
SPREAD_K = 3.0  # multiplier on the spread's robust standard deviation
JITTER_PRIOR_S = 10e-6  # spread assumed before 4 offsets are known (software timestamping)
PHC_READ_FLOOR_S = 100e-9  # added to a PHC reading's own half width (timestamp granularity)
PHC_FREE_PPM = 100.0  # frequency error of an undisciplined PHC, for ingress→read extrapolation
# TAI − UTC since 2017-01-01. A master that does not vouch for its currentUtcOffset
# (currentUtcOffsetValid 0) gets no less than this, ptp4l's own rule for its default
# utc_offset (clock.c, clock_update_time_properties): leap seconds have only been inserted.
UTC_OFFSET_FLOOR_S = 37
RECOVER_SYNCS = 3  # consecutive good Syncs before a (re)started source counts as usable

Runner = Callable[[list[str], float], tuple[int, str]]


def run_tool(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run one linuxptp tool; (exit status, stdout + stderr). Raises OSError / TimeoutExpired."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@dataclass
class PtpSettings:
    uds: str = "/var/run/ptp4l"
    phc_device: str = ""
    poll_interval_s: float = 2.0
    pmc_path: str = "pmc"
    phc_ctl_path: str = "phc_ctl"  # unused (the PHC is read directly); old configs name it
    timeout_s: float = 1.0
    gm_policy: GmPolicy = field(default_factory=GmPolicy)  # grandmaster quality allowances
    pmc_local: str = ""  # pmc's reply socket (-i); empty: pmc's default /var/run/pmc.PID


def robust_jitter(offsets_ns: list[float]) -> float | None:
    """Robust σ (s) of one offset from the spread of successive differences.

    Differences remove a linear trend (a free-running clock drifts against the master), the
    median absolute deviation ignores the odd delayed packet; ``/√2`` because a difference
    carries the noise of two samples.
    """
    if len(offsets_ns) < 4:
        return None
    diffs = [b - a for a, b in itertools.pairwise(offsets_ns)]
    med = statistics.median(diffs)
    mad = statistics.median(abs(d - med) for d in diffs)
    return 1.4826 * mad / math.sqrt(2.0) * 1e-9


def port_reason(state: str | None) -> str:
    """Why a port in this state gives no usable offset (one line, with the likely cause)."""
    if state is None:
        return "ptp4l reported no port"
    if state == "LISTENING":
        return "no master: port LISTENING (announce receipt timeout: master gone or unreachable)"
    if state in ("MASTER", "GRAND_MASTER", "PRE_MASTER", "PASSIVE"):
        return f"port {state}: this ptp4l is not following a master (run it as a client, -s)"
    if state == "FAULTY":
        return "port FAULTY: ptp4l reports a fault on the interface (see ptp4l's log)"
    return f"port {state}: not following a master"


def utc_offset_s(status: PtpStatus) -> int:
    """TAI − UTC to take off a PTP-timescale PHC: the master's currentUtcOffset when it says
    the value is valid (or does not say), else at least UTC_OFFSET_FLOOR_S (as ptp4l does)."""
    announced = status.current_utc_offset_s
    if status.utc_offset_valid is False:
        return max(announced or 0, UTC_OFFSET_FLOOR_S)
    return announced if announced is not None else UTC_OFFSET_FLOOR_S


class PtpSource:
    """Polls one ptp4l instance; ``on_measurement`` receives one measurement per new Sync."""

    kind = "ptp"

    def __init__(
        self,
        settings: PtpSettings,
        on_measurement: Callable[[Measurement], None],
        runner: Runner = run_tool,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        exists: Callable[[str], bool] = os.path.exists,
        epoch: float | None = None,
        read_clock: Callable[[], ClockReading] | None = None,
        phc: PhcReader | None = None,
    ) -> None:
        self.settings = settings
        # the PHC, opened (read-only) on first use; injectable for tests
        self.phc = phc or (PhcReader(settings.phc_device) if settings.phc_device else None)
        self._phc_read_s = 0.0  # half width of the last PHC reading
        # the engine's (the daemon passes it; alone: this host's, or 0 for an injected
        # clock): θ = reference − (raw + epoch)
        self.epoch = epoch if epoch is not None else (
            clocks.start_epoch() if clock is time.time and read_clock is None else 0.0)
        # both clocks; a test's injected ``clock`` alone means a host with δ = 0
        self.read_clock = read_clock or (clocks.read if clock is time.time else
                                         lambda: ClockReading.trace(self.clock(), self.epoch))
        self._prev_reading: ClockReading | None = None
        self.on_measurement = on_measurement
        self.runner = runner
        self.clock = clock
        self.monotonic = monotonic
        self.exists = exists
        self.name = f"ptp:{settings.uds}"
        self.state = "init"  # init | recovering | ok | unusable
        self.reason = "starting: no pmc poll yet"
        self._problem_key = ""
        self.status: PtpStatus | None = None
        self.quality: GmQuality | None = None
        self.last_offset: float | None = None
        self.last_delay: float | None = None
        self.last_t: float | None = None
        self.last_bound: float | None = None
        self.polls = 0
        self.good = 0
        self._offsets: deque[float] = deque(maxlen=SPREAD_WINDOW)
        self._last_ingress: int | None = None
        self._fresh = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ptp-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.settings.timeout_s + 1)
        if self.phc is not None:
            self.phc.close()

    def warmup_progress(self) -> float:
        return 1.0

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self.monotonic()
            try:
                self.poll_once()
            except Exception:  # a bug here must not kill the source thread
                log.exception("PTP poll failed unexpectedly; retrying next interval")
            self._stop.wait(max(0.0, self.settings.poll_interval_s - (self.monotonic() - began)))

    # -- state -----------------------------------------------------------------------------
    def _fail(self, key: str, reason: str) -> None:
        """Mark the source unusable; log once per kind of problem, not once per poll."""
        if key != self._problem_key:
            log.warning("PTP source %s unusable: %s", self.name, reason)
            self._problem_key = key
        self.state, self.reason = "unusable", reason
        self._fresh = 0
        self._offsets.clear()
        self._last_ingress = None

    def health(self) -> dict[str, str | None]:
        """Source name → None when usable, else the reason (read by the engine thread)."""
        return {self.name: None if self.state == "ok" else self.reason}

    # -- one poll --------------------------------------------------------------------------
    def _pmc(self) -> PtpStatus | None:
        s = self.settings
        local = ["-i", s.pmc_local] if s.pmc_local else []
        if s.pmc_local:  # a pmc killed on timeout leaves its socket file behind
            with contextlib.suppress(OSError):
                os.unlink(s.pmc_local)
        argv = [s.pmc_path, "-u", "-b", "0", "-s", s.uds, *local, *PMC_QUERIES]
        try:
            rc, out = self.runner(argv, s.timeout_s)
        except FileNotFoundError:
            self._fail("pmc-missing", f"pmc not found ({s.pmc_path}): install linuxptp or set "
                                      "ptp.pmc_path")
            return None
        except PermissionError:
            self._fail("pmc-exec", f"permission denied executing {s.pmc_path}; check "
                                   "ptp.pmc_path")
            return None
        except subprocess.TimeoutExpired:
            self._fail("pmc-timeout", f"pmc gave no answer within {s.timeout_s:g} s "
                                      "(ptp4l hung or overloaded); raise ptp.timeout_s?")
            return None
        except OSError as exc:
            self._fail("pmc-os", f"cannot run {s.pmc_path}: {exc.strerror or exc}")
            return None
        problem = pmc_failure(out)
        if problem:
            self._fail("pmc-perm" if "permission" in problem else "pmc-open", problem)
            return None
        try:
            status = parse_pmc_status(out)
        except PmcParseError as exc:
            self._fail("pmc-parse", f"unexpected pmc output ({exc}); is this linuxptp?")
            return None
        if status.replies == 0:
            if not self.exists(s.uds):
                self._fail("no-ptp4l", f"ptp4l not running: no management socket at {s.uds} "
                                       "(start ptp4l, or set ptp.uds to its uds_address)")
            else:
                self._fail("ptp4l-silent", f"ptp4l not answering on {s.uds} (pmc exit {rc}); "
                                           "is ptp4l running?")
            return None
        if status.master_offset_ns is None or not status.ports or (
                status.mean_path_delay_ns is None):
            self._fail("pmc-incomplete", "ptp4l's reply lacks TIME_STATUS_NP, PORT_DATA_SET "
                                         "or CURRENT_DATA_SET (cut short?)")
            return None
        return status

    def _phc_minus_sys(self) -> tuple[float, ClockReading, ClockReading] | None:
        """(PHC − system in s, clocks before and after the reading) or None after marking
        unusable (one log line per kind of problem, naming ``ptp.phc_device``)."""
        assert self.phc is not None
        before = self.read_clock()
        try:
            got = self.phc.read()
        except OSError as exc:  # PhcError: says what and which key
            self._fail(getattr(exc, "key", "phc-read"), str(exc))
            return None
        after = self.read_clock()
        self._phc_read_s = got.half_width_ns * 1e-9 + PHC_READ_FLOOR_S
        return got.phc_minus_sys_ns * 1e-9, before, after

    def poll_once(self) -> Measurement | None:
        """One pmc (+ PHC) round; feeds and returns a measurement when a new Sync came."""
        self.polls += 1
        status = self._pmc()
        if status is None:
            return None
        self.status = status
        state = status.port_state
        if state not in MEASURING_STATES:
            self._fail("port-" + str(state), port_reason(state))
            return None
        if status.gm_present is False:
            self._fail("no-gm", "no grandmaster (gmPresent false)")
            return None
        ingress = status.ingress_time_ns
        if not ingress:
            self._fail("no-sync", f"port {state} but no Sync received yet (ingress_time 0)")
            return None
        quality = assess(status, self.settings.gm_policy)
        if not math.isfinite(quality.accuracy_s):
            self._fail("gm-accuracy", "grandmaster claims an accuracy worse than 10 s")
            return None
        if self.quality is None or quality.trust != self.quality.trust:
            log.log(logging.INFO if quality.trust == "traceable" else logging.WARNING,
                    "PTP grandmaster %s is %s: bound allows %.6f s for it%s", status.gm_identity,
                    quality.trust, quality.accuracy_s,
                    f" ({quality.reason})" if quality.reason else "")
        self.quality = quality
        phc = None
        if self.phc is not None:
            phc = self._phc_minus_sys()
            if phc is None:
                return None
            mid_real = (phc[1].real + phc[2].real) / 2.0
            now_domain = (mid_real + phc[0]) * 1e9  # PHC time now (ns)
            reading = phc[2]
        else:
            reading = self.read_clock()
            now_domain = reading.real * 1e9  # ptp4l's clock is the system clock
        prev, self._prev_reading = self._prev_reading, reading
        age = (now_domain - ingress) * 1e-9
        sync_s = status.sync_interval_s or 1.0
        limit = max(STALE_SYNCS * sync_s, STALE_FLOOR_S)
        if age > limit:
            self._fail("stale", f"master silent: last Sync {age:.1f} s ago (limit {limit:g} s, "
                                f"port {state})")
            return None
        if ingress == self._last_ingress:
            return None  # polled faster than Syncs arrive: nothing new
        self._last_ingress = ingress
        m = self._measurement(status, phc, max(age, 0.0), prev or reading, reading)
        self._fresh += 1
        if self.state != "ok":
            if self._fresh >= RECOVER_SYNCS:
                if self.state == "unusable":
                    log.info("PTP source %s usable again (port %s, master %s)", self.name,
                             state, status.gm_identity)
                self.state, self.reason, self._problem_key = "ok", "", ""
            else:
                self.state = "recovering"
                self.reason = f"waiting for {RECOVER_SYNCS} consecutive Syncs " \
                              f"({self._fresh}/{RECOVER_SYNCS})"
        self.good += 1
        self.last_offset, self.last_delay, self.last_t, self.last_bound = (
            m.offset, m.delay, m.t, m.bound)
        self.on_measurement(m)
        return m

    # -- the measurement and its bound -----------------------------------------------------
    def bound(self, status: PtpStatus, phc_read: bool, ingress_age: float) -> float:
        """Half-width (s) of the interval holding the true offset, from what PTP knows.

        ``meanPathDelay`` (PTP assumes symmetric paths; the worst asymmetry puts all the delay
        one way, an error of up to the one-way mean) + what the grandmaster's word is worth
        (its clockAccuracy, widened for holdover or missing traceability: ptp_quality) + 3 ×
        the robust spread of recent offsets + with a PHC: the PHC read uncertainty (half the
        narrowest reading's width), the
        ingress→read extrapolation at ``PHC_FREE_PPM`` and, when ptp4l's servo steers the PHC
        (SLAVE), the |master_offset| it may already have removed.
        """
        delay = max(status.mean_path_delay_ns or 0.0, 0.0) * 1e-9
        accuracy = assess(status, self.settings.gm_policy).accuracy_s
        jitter = robust_jitter(list(self._offsets))
        spread = SPREAD_K * (jitter if jitter is not None else JITTER_PRIOR_S)
        b = delay + accuracy + spread
        if phc_read:
            b += self._phc_read_s + ingress_age * PHC_FREE_PPM * 1e-6
            if status.port_state == "SLAVE":
                b += abs(status.master_offset_ns or 0) * 1e-9
        return b

    def _measurement(self, status: PtpStatus, phc: tuple[float, ClockReading, ClockReading]
                     | None, ingress_age: float, prev: ClockReading,
                     now: ClockReading) -> Measurement:
        mo = float(status.master_offset_ns or 0)
        self._offsets.append(mo)
        if phc is None:
            # the ingress lies between the previous poll and this one: δ then was between
            d0, d1 = prev.delta(self.epoch), now.delta(self.epoch)
            delta = (d0 + d1) / 2.0
            widen = abs(d1 - d0) / 2.0 + max(prev.width, now.width) / 2.0
            offset = -mo * 1e-9 + delta
            t = (status.ingress_time_ns or 0) * 1e-9 - self.epoch - delta
        else:
            phc_minus_sys, before, after = phc
            d0, d1 = before.delta(self.epoch), after.delta(self.epoch)
            widen = abs(d1 - d0) / 2.0 + max(before.width, after.width) / 2.0
            t = (before.raw + after.raw) / 2.0
            shift = 0.0
            if status.ptp_timescale and self.settings.phc_device != "CLOCK_REALTIME":
                shift = float(utc_offset_s(status))  # PHC runs TAI, we serve UTC
            offset = phc_minus_sys - mo * 1e-9 - shift + (d0 + d1) / 2.0
        delay = max(status.mean_path_delay_ns or 0.0, 0.0) * 1e-9
        return Measurement(t=t, offset=offset, delay=delay,
                           bound=self.bound(status, phc is not None, ingress_age) + widen,
                           source=self.name, kind="ptp", leap=status.leap_indicator)

    # -- reporting -------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        st = self.status
        acc = st.gm_clock_accuracy if st else None
        return [{
            "name": self.name, "kind": "ptp", "state": self.state, "reason": self.reason,
            "last_offset": self.last_offset, "last_delay": self.last_delay,
            "last_t": self.last_t,
            "sample_bound_ns": math.ceil(self.last_bound * 1e9) if self.last_bound else None,
            "port_state": st.port_state if st else None,
            "gm_identity": st.gm_identity if st else None,
            "gm_clock_accuracy": (f"0x{acc:02x}" + (" (unknown)" if acc == ACCURACY_UNKNOWN
                                                     else "")) if acc is not None else None,
            "gm_clock_class": st.gm_clock_class if st else None,
            "gm_trust": self.quality.trust if self.quality else None,
            "gm_note": self.quality.reason if self.quality else None,
            "phc_device": self.settings.phc_device or None,
            "polls": self.polls, "good": self.good,
            "poll_interval_s": self.settings.poll_interval_s,
        }]
