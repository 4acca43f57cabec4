"""The clock rig: chronotickd under a clock the harness controls, every answer scored against truth.

- ``clockshim.c`` (built here with gcc, on demand) is LD_PRELOADed into the daemon ONLY; it
  reads its clock model from a small mmap'd control file that :class:`ClockControl` rewrites
  at run time under a seqlock. The harness and every client stay unshimmed, so the harness's
  own clock is the truth (a real chronyd ``-x`` on loopback serves that same clock as NTP).
- :class:`Rig` starts shimmed daemons (each with its own control file), queries them from the
  harness and scores each answer: its true time lies between the harness's send and receive
  readings. See docs/rig.md.

Everything started is killed by PID and every file removed when the Rig closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
for _p in (REPO, REPO / "clients", TESTS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from ntp_responder import Responder  # noqa: E402
from support import PYTHONPATH, kill_pid, wait_for_socket, write_config  # noqa: E402

from chronotick_client import Client  # noqa: E402

SHIM_SRC = HERE / "clockshim.c"
NS = 1_000_000_000
STA_PLL, STA_INS, STA_DEL, STA_UNSYNC, STA_NANO = 0x1, 0x10, 0x20, 0x40, 0x2000
TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR = 0, 1, 2, 3, 4, 5
UNSYNC_MAXERROR_US = 16_000_000

# the control file (struct ctl in clockshim.c); seq at byte 16, parameters from byte 24
CTL_MAGIC = 0x314D4948534B5443
CTL_VERSION = 1
CTL_HEAD = struct.Struct("<QII")
CTL_SEQ = struct.Struct("<Q")
CTL_SEQ_AT = 16
CTL_PARAMS_AT = 24
CTL_PARAMS = struct.Struct("<qqdqqqqdqqqqqqiiii")
CTL_SIZE = 4096
SETPRIV = shutil.which("setpriv")


def build_shim(dest: Path) -> Path:
    """Compile clockshim.c into ``dest`` (about 0.1-0.3 s); raises with gcc's message."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc not found: the clock rig builds tests/rig/clockshim.c "
                           "(apt-get install gcc; `make system-deps` does it)")
    digest = hashlib.sha256(SHIM_SRC.read_bytes()).hexdigest()[:12]
    out = Path(dest) / f"clockshim-{digest}.so"
    if not out.exists():
        tmp = out.with_suffix(".tmp.so")
        # gcc's own temporaries in a directory of ours: interrupted (Ctrl-C kills the driver
        # only), its cc1/as left /tmp/cc*.s, .o and .res behind
        with tempfile.TemporaryDirectory(dir=dest, prefix="gcc-") as scratch:
            r = subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp),
                                str(SHIM_SRC)], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "TMPDIR": scratch})
        if r.returncode != 0:
            raise RuntimeError(f"building {SHIM_SRC} failed:\n{r.stderr}")
        tmp.replace(out)
    return out


def real_now() -> tuple[int, int]:
    """(REALTIME, MONOTONIC_RAW) of the harness, read back to back (ns, unshimmed)."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME), time.clock_gettime_ns(
        time.CLOCK_MONOTONIC_RAW)


@dataclass
class ClockParams:
    """The shim's model; field order is CTL_PARAMS's. Times are the REAL clocks' ns."""

    real_base_ns: int = 0
    offset_ns: int = 0
    freq: float = 0.0
    raw_base_real_ns: int = 0
    raw_base_fake_ns: int = 0
    slew_start_ns: int = 0
    slew_end_ns: int = 0
    slew_rate: float = 0.0
    slew_accum_ns: int = 0
    leap_at_ns: int = 0
    tx_maxerror: int = UNSYNC_MAXERROR_US
    tx_esterror: int = UNSYNC_MAXERROR_US
    tx_offset: int = 0
    tx_freq: int = 0
    tx_status: int = STA_UNSYNC
    tx_state: int = TIME_ERROR
    tx_tai: int = 37
    pad: int = 0

    def pack(self) -> bytes:
        return CTL_PARAMS.pack(*self.__dict__.values())

    # -- the model, computed exactly as clockshim.c does (same doubles, same truncation) ---
    def slews(self, real_ns: int) -> int:
        s = self.slew_accum_ns
        if self.slew_rate != 0.0 and real_ns > self.slew_start_ns:
            until = min(real_ns, self.slew_end_ns)
            s += int(self.slew_rate * float(until - self.slew_start_ns))
        return s

    def d_noleap(self, real_ns: int) -> int:
        return (self.offset_ns + int(self.freq * float(real_ns - self.real_base_ns))
                + self.slews(real_ns))

    def leap(self, real_ns: int) -> int:
        return NS if self.leap_at_ns and real_ns >= self.leap_at_ns else 0

    def d(self, real_ns: int) -> int:
        """fake REALTIME − real REALTIME at real time ``real_ns``."""
        return self.d_noleap(real_ns) - self.leap(real_ns)

    def fake_raw(self, raw_ns: int) -> int:
        return self.raw_base_fake_ns + int(float(raw_ns - self.raw_base_real_ns)
                                           * (1.0 + self.freq))


class ClockControl:
    """One daemon's clock: a control file the shim maps, rewritten under a seqlock.

    Starts as the identity (fake = real) with an unsynchronized kernel (STA_UNSYNC, 16 s).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.params = ClockParams()
        real, raw = real_now()
        self.params.real_base_ns = real
        self.params.raw_base_real_ns = self.params.raw_base_fake_ns = raw
        with open(self.path, "wb") as fh:
            fh.write(b"\0" * CTL_SIZE)
        self._fd = os.open(self.path, os.O_RDWR)
        self._mm = mmap.mmap(self._fd, CTL_SIZE)
        self._seq = 0
        CTL_HEAD.pack_into(self._mm, 0, CTL_MAGIC, CTL_VERSION, 0)
        self.write()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._mm.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def write(self) -> None:
        """Publish ``params``: odd sequence, the fields, even sequence (readers retry)."""
        self._seq += 1
        CTL_SEQ.pack_into(self._mm, CTL_SEQ_AT, self._seq)
        self._mm[CTL_PARAMS_AT:CTL_PARAMS_AT + CTL_PARAMS.size] = self.params.pack()
        self._seq += 1
        CTL_SEQ.pack_into(self._mm, CTL_SEQ_AT, self._seq)

    def set_passthrough_kernel(self, on: bool) -> None:
        """adjtimex shows the real kernel's values (flags bit 0) instead of the file's."""
        CTL_HEAD.pack_into(self._mm, 0, CTL_MAGIC, CTL_VERSION, 1 if on else 0)

    # -- reading the model (harness side) -----------------------------------------------
    def d_ns(self, real_ns: int | None = None) -> int:
        """fake − real REALTIME now (or at ``real_ns``): the daemon's true offset is −D."""
        return self.params.d(real_now()[0] if real_ns is None else real_ns)

    def real_of_system(self, system_ns: int, near_real_ns: int) -> int:
        """The real time at which the daemon's REALTIME read ``system_ns``: r with
        r + D(r) = system_ns, solved from ``near_real_ns`` (a fixed point: D moves with r, by
        up to 500 ppm × the query's window during a slew; a starved query's window reached
        200 ms, 100 µs of D). Across a step or leap inside the window it may not settle:
        the caller checks the result lies in the window."""
        r = system_ns - self.params.d(near_real_ns)
        for _ in range(3):
            r = system_ns - self.params.d(r)
        return r

    # -- changing it (continuous unless a step is asked for) ----------------------------
    def _rebase(self) -> None:
        p = self.params
        real, raw = real_now()
        p.offset_ns = p.d_noleap(real) - p.slews(real)
        p.raw_base_fake_ns = p.fake_raw(raw)
        p.real_base_ns, p.raw_base_real_ns = real, raw

    def set(self, offset_s: float | None = None, freq_ppm: float | None = None) -> None:
        """Set the offset (a step to that value) and/or the oscillator's frequency error."""
        self._rebase()
        if offset_s is not None:
            self.params.offset_ns = round(offset_s * NS)
        if freq_ppm is not None:
            self.params.freq = freq_ppm * 1e-6
        self.write()

    def step(self, delta_s: float) -> None:
        """Someone steps CLOCK_REALTIME by ``delta_s`` (RAW and MONOTONIC unaffected)."""
        self.params.offset_ns += round(delta_s * NS)
        self.write()

    def slew(self, rate_ppm: float, duration_s: float) -> None:
        """Another daemon slews REALTIME (and MONOTONIC, as adjtimex does) at ``rate_ppm``
        for ``duration_s`` from now; RAW is not touched. A running slew is folded in first."""
        p = self.params
        real = real_now()[0]
        p.slew_accum_ns = p.slews(real)
        p.slew_rate = rate_ppm * 1e-6
        p.slew_start_ns, p.slew_end_ns = real, real + round(duration_s * NS)
        self.write()

    def leap_at(self, true_leap_ns: int) -> None:
        """The kernel inserts a leap second when ITS clock reads ``true_leap_ns`` (midnight):
        the fake clock steps back 1 s there; STA_INS/TIME_INS are reported until then."""
        p = self.params
        # the real instant r with r + D(r) = true_leap_ns; D moves with r (frequency, slews),
        # so a fixed point, not one subtraction: at an offset of hours and 20 ppm, one step
        # alone misplaces the leap by tens of ms
        r = true_leap_ns - p.d_noleap(true_leap_ns)
        for _ in range(4):
            r = true_leap_ns - p.d_noleap(r)
        p.leap_at_ns = r
        p.tx_status |= STA_INS
        if p.tx_state == TIME_OK:
            p.tx_state = TIME_INS
        self.write()

    def reboot(self, raw_start_s: float = 3.0, jump_s: float = 0.0) -> None:
        """A new boot: RAW (and MONOTONIC, BOOTTIME) restart near ``raw_start_s``; REALTIME
        moves by ``jump_s`` (the RTC's error while the machine was down)."""
        self._rebase()
        self.params.raw_base_fake_ns = round(raw_start_s * NS)
        self.params.offset_ns += round(jump_s * NS)
        self.write()

    def kernel(self, maxerror_us: int, esterror_us: int | None = None, status: int = 0,
               state: int | None = None, offset: int = 0, freq: int = 0) -> None:
        """What adjtimex reports (read-only for the daemon)."""
        p = self.params
        p.tx_maxerror, p.tx_esterror = maxerror_us, maxerror_us if esterror_us is None \
            else esterror_us
        p.tx_status, p.tx_offset, p.tx_freq = status, offset, freq
        p.tx_state = state if state is not None else (
            TIME_ERROR if status & STA_UNSYNC else TIME_OK)
        self.write()


# -- scoring ---------------------------------------------------------------------------------
@dataclass
class Sample:
    send_ns: int            # harness REALTIME before the request (true)
    recv_ns: int            # after the reply (true)
    system_ns: int          # the daemon's own (fake) REALTIME reading
    earliest_ns: int
    latest_ns: int
    corrected_ns: int
    bound_ns: int
    status: str
    truth_lo_ns: int        # truth at send/recv (a leap can make lo > hi: min/max taken)
    truth_hi_ns: int
    truth_ns: int | None    # exact truth at the daemon's read (None: not pinned down)
    # A query that straddles an inserted leap second: UTC ran [lo, leap) then repeated from
    # leap − 1 s, so the truths it may have seen are two pieces, not the hull lo..hi.
    pieces: tuple[tuple[int, int], ...] = ()

    @property
    def window_ns(self) -> int:
        return self.recv_ns - self.send_ns

    @property
    def contained(self) -> bool:
        """earliest ≤ truth ≤ latest for some truth in the send..receive window."""
        windows = self.pieces or ((self.truth_lo_ns, self.truth_hi_ns),)
        return any(self.earliest_ns <= hi and self.latest_ns >= lo for lo, hi in windows)

    @property
    def contained_exact(self) -> bool:
        """earliest ≤ truth ≤ latest for the exact truth at the daemon's own clock read, when
        it is pinned down (else ``contained``). Stricter than ``contained``: a query whose
        window the harness's scheduling widened cannot hide a miss."""
        if self.truth_ns is None:
            return self.contained
        return self.earliest_ns <= self.truth_ns <= self.latest_ns

    @property
    def error_ns(self) -> int:
        """served midpoint − truth (exact truth when known, else the window's middle)."""
        if self.truth_ns is not None:
            return self.corrected_ns - self.truth_ns
        return self.corrected_ns - (self.truth_lo_ns + self.truth_hi_ns) // 2


@dataclass
class Score:
    samples: list[Sample] = field(default_factory=list)

    def add(self, s: Sample) -> None:
        self.samples.append(s)

    def extend(self, other: Score) -> None:
        self.samples.extend(other.samples)

    @property
    def queries(self) -> int:
        return len(self.samples)

    @property
    def misses(self) -> list[Sample]:
        return [s for s in self.samples if not s.contained]

    @property
    def coverage(self) -> float:
        """Answers meeting their query's truth window (the issue's measure)."""
        return 1.0 - len(self.misses) / len(self.samples) if self.samples else 0.0

    @property
    def exact_misses(self) -> list[Sample]:
        return [s for s in self.samples if not s.contained_exact]

    @property
    def coverage_exact(self) -> float:
        """Answers containing the exact truth at the daemon's read (``contained_exact``)."""
        return 1.0 - len(self.exact_misses) / len(self.samples) if self.samples else 0.0

    def _abs_errors(self) -> list[float]:
        return sorted(abs(s.error_ns) / NS for s in self.samples)

    @property
    def mae_s(self) -> float:
        e = self._abs_errors()
        return sum(e) / len(e) if e else math.nan

    @property
    def p99_s(self) -> float:
        e = self._abs_errors()
        return e[min(len(e) - 1, int(0.99 * len(e)))] if e else math.nan

    @property
    def half_width_s(self) -> float:
        return _median([s.bound_ns / NS for s in self.samples])

    @property
    def window_s(self) -> float:
        return _median([s.window_ns / NS for s in self.samples])

    @property
    def p99_window_s(self) -> float:
        w = sorted(s.window_ns / NS for s in self.samples)
        return w[min(len(w) - 1, int(0.99 * len(w)))] if w else math.nan

    @property
    def max_window_s(self) -> float:
        return max((s.window_ns / NS for s in self.samples), default=math.nan)

    def summary(self) -> str:
        worst = max(self.exact_misses, key=lambda s: abs(s.error_ns), default=None)
        w = (f"; worst miss {worst.error_ns / 1e6:+.3f} ms vs bound {worst.bound_ns / 1e6:.3f} "
             f"ms ({worst.status})" if worst else "")
        return (f"{self.queries} queries, coverage {self.coverage:.4f} (exact "
                f"{self.coverage_exact:.4f}), MAE "
                f"{self.mae_s * 1e6:.1f} µs, p99 {self.p99_s * 1e6:.1f} µs, median half-width "
                f"{self.half_width_s * 1e6:.1f} µs, window {self.window_s * 1e6:.0f} µs "
                f"(max {self.max_window_s * 1e6:.0f}){w}")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else math.nan


# -- daemons -------------------------------------------------------------------------------
@dataclass
class RigDaemon:
    """One shimmed chronotickd: its clock, its process, its socket; queried from the harness."""

    rig: Rig
    name: str
    workdir: Path
    clock: ClockControl
    config: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    client: Client | None = None
    started_ns: int = 0

    @property
    def socket(self) -> str:
        return str(self.workdir / "ct.sock")

    def log(self) -> str:
        p = self.workdir / "daemon.log"
        return p.read_text() if p.exists() else ""

    def spawn(self) -> RigDaemon:
        """Start the process without waiting for its socket (many daemons start at once)."""
        cmd = [sys.executable, "-m", "chronotickd", "--config", str(self.config)]
        if os.geteuid() == 0 and SETPRIV:  # no CAP_SYS_TIME: a second guard besides the shim
            cmd = [SETPRIV, "--inh-caps=-sys_time", "--bounding-set=-sys_time", "--", *cmd]
        with open(self.workdir / "daemon.log", "a") as logf:
            self.started_ns = real_now()[0]
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=self.env)
        return self

    def start(self) -> RigDaemon:
        return self.spawn().connect()

    def connect(self) -> RigDaemon:
        """Wait for the spawned daemon's socket and open the harness's client on it."""
        assert self.proc is not None, f"daemon {self.name} was not spawned"
        try:
            wait_for_socket(self.socket, self.proc, timeout=60)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; daemon log:\n{self.log()[-2000:]}") from None
        self.client = Client(self.socket, timeout=5.0)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            kill_pid(self.proc)
            self.proc = None

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.client is not None, f"daemon {self.name} is not running"
        return self.client.call(op, **args)

    def query(self) -> Sample:
        """One `now`, scored: the truth lies between the harness's send and receive reads."""
        assert self.client is not None, f"daemon {self.name} is not running"
        send = time.clock_gettime_ns(time.CLOCK_REALTIME)
        r = self.client.now()
        recv = time.clock_gettime_ns(time.CLOCK_REALTIME)
        return self.sample(send, recv, r)

    def sample(self, send: int, recv: int, r: dict[str, Any]) -> Sample:
        """Score a `now`-shaped answer ``r`` (the socket's, or an MCP get_time's) obtained
        between the harness's REALTIME readings ``send`` and ``recv``."""
        truth = self.rig.truth_ns
        lo, hi = sorted((truth(send), truth(recv)))
        pieces: tuple[tuple[int, int], ...] = ()
        leap = self.rig.leap_ns
        if leap and send < leap <= recv:  # UTC repeated a second inside this query
            utc_leap = truth(leap) + NS
            pieces = ((truth(send), utc_leap), (utc_leap - NS, truth(recv)))
        near = (send + recv) // 2
        at = self.clock.real_of_system(r["system_time_ns"], near)
        exact = truth(at) if send - 1000 <= at <= recv + 1000 else None
        if pieces:  # D at the daemon's read may be either side's: not pinned down
            exact = None
        return Sample(send, recv, r["system_time_ns"], r["earliest_ns"], r["latest_ns"],
                      r["corrected_time_ns"], r["bound_ns"], r["status"], lo, hi, exact,
                      pieces)

    def wait_status(self, want: str = "synchronized", timeout: float = 60.0) -> float:
        """Seconds from the daemon's start until `now` says ``want``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited; log:\n{self.log()[-2000:]}")
            if self.query().status == want:
                return (real_now()[0] - self.started_ns) / NS
            time.sleep(0.1)
        raise AssertionError(f"daemon {self.name} not {want} within {timeout} s; status "
                             f"{self.call('status')}\nlog:\n{self.log()[-2000:]}")

    def sample_for(self, seconds: float, every_s: float = 0.05, score: Score | None = None,
                   each: Callable[[Sample], None] | None = None) -> Score:
        """Query every ``every_s`` for ``seconds``; the samples go into ``score``."""
        score = score if score is not None else Score()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s = self.query()
            score.add(s)
            if each is not None:
                each(s)
            time.sleep(every_s)
        return score


class Rig:
    """Shimmed daemons with their own clocks, a shared reference, and the truth.

    ``truth_ns(real_ns)`` maps the harness's REALTIME to true UTC: the identity, except when a
    test plays a leap second (``leap_responder``). Then true UTC is the harness's clock moved
    by ``utc_shift_ns`` so that a UTC midnight falls a few seconds ahead, and from the leap's
    real instant on it is 1 s less: the harness's clock does not leap (it plays TAI's part,
    continuous), UTC inserts the second the way the kernel does (POSIX 23:59:59 shown twice).
    docs/rig.md, "Leap seconds".
    """

    # what ``daemon`` makes: tests may put a subclass here (e.g. one that reads shm)
    daemon_class: type[RigDaemon] = RigDaemon

    def __init__(self, workdir: Path | None = None) -> None:
        self._own = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ct-rig-"))
        self.shim = build_shim(self.workdir)
        self.daemons: list[RigDaemon] = []
        self.leap_ns = 0  # true-time leap (UTC steps back 1 s at this real instant); 0: none
        self.utc_shift_ns = 0  # true UTC − the harness's REALTIME before any leap
        self._responders: list[Responder] = []

    def truth_ns(self, real_ns: int) -> int:
        utc = real_ns + self.utc_shift_ns
        return utc - NS if self.leap_ns and real_ns >= self.leap_ns else utc

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
            d.clock.close()
        for r in self._responders:
            r.stop()
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def daemon(self, name: str, servers: list[str], *, start: bool = True,
               boot_id: str | None = None, env: dict[str, str] | None = None,
               **config: object) -> RigDaemon:
        """A shimmed chronotickd named ``name`` (config overrides as in support.write_config:
        ``ntp__minpoll_s=1``). ``boot_id`` writes a file named by CHRONOTICK_BOOT_ID_FILE."""
        work = self.workdir / name
        work.mkdir(parents=True, exist_ok=True)
        cfg = {"ntp__burst_interval_s": 0.5, "ntp__minpoll_s": 1, "ntp__maxpoll_s": 1,
               "ntp__timeout_s": 0.5, **config}
        conf = write_config(work, ntp__servers=list(servers), **cfg)
        clock = ClockControl(work / "clock.ctl")
        boot_file = work / "boot_id"
        boot_file.write_text((boot_id or "00000000-0000-4000-8000-000000000001") + "\n")
        denv = {**os.environ, "PYTHONPATH": PYTHONPATH, "LD_PRELOAD": str(self.shim),
                "CLOCKSHIM_CTL": str(clock.path), "CHRONOTICK_BOOT_ID_FILE": str(boot_file),
                **(env or {})}
        d = self.daemon_class(self, name, work, clock, conf, denv)
        self.daemons.append(d)
        return d.start() if start else d

    def set_boot_id(self, d: RigDaemon, boot_id: str) -> None:
        Path(d.env["CHRONOTICK_BOOT_ID_FILE"]).write_text(boot_id + "\n")

    def responder(self) -> Responder:
        """A loopback NTP server serving the harness's clock (the truth) that a scenario can
        silence (``Responder.silent``), which the shared chronyd cannot be."""
        r = Responder().start()
        self._responders.append(r)
        return r

    def leap_responder(self, leap_in_s: float) -> LeapResponder:
        """A loopback NTP server serving true UTC with a leap second inserted ``leap_in_s``
        from now (leap indicator 1 before it); also makes the rig's truth leap.

        A leap happens only at a UTC midnight (RFC 5905; the kernel and the daemon place it
        there), so true UTC is the harness's clock shifted to put the next midnight
        ``leap_in_s`` ahead (``utc_shift_ns``, less than a day). A daemon meant to follow it
        needs its clock set near that UTC (``utc_shift_ns`` plus its error) and
        ``ClockControl.leap_at(midnight)`` for its kernel's own insert.
        """
        leap = real_now()[0] + round(leap_in_s * NS)
        day = 86400 * NS
        midnight = (leap // day + 1) * day
        self.utc_shift_ns = midnight - leap
        self.leap_ns = leap
        r = LeapResponder(self.leap_ns, self.utc_shift_ns).start()
        self._responders.append(r)
        return r

    @property
    def leap_utc_ns(self) -> int:
        """The UTC midnight at which the played leap second is inserted (0: none)."""
        return self.leap_ns + self.utc_shift_ns if self.leap_ns else 0


class LeapResponder(Responder):
    """Serves true UTC across an inserted leap second: announces it (LI = 1) until the leap,
    then steps back 1 s, as a leap-aware server that does not smear does. UTC is the
    harness's clock plus ``utc_shift_ns`` (a midnight close ahead, see ``Rig.leap_responder``).
    """

    def __init__(self, leap_ns: int, utc_shift_ns: int = 0) -> None:
        self.leap_ns = leap_ns
        self.utc_shift_s = utc_shift_ns / NS
        super().__init__(0.0)
        self.stratum = 1

    @property  # type: ignore[override]
    def shift(self) -> float:
        return self.utc_shift_s - (1.0 if time.time_ns() >= self.leap_ns else 0.0)

    @shift.setter
    def shift(self, value: float) -> None:
        pass

    @property  # type: ignore[override]
    def leap(self) -> int:
        return 0 if time.time_ns() >= self.leap_ns else 1

    @leap.setter
    def leap(self, value: int) -> None:
        pass


@contextlib.contextmanager
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()
