"""Scenarios of issue 12 run under the clock rig: each returns a ``Score`` against truth.

Shared by tests/test_truth.py (short, asserted) and benchmarks/bench_truth.py (figures). A
``scale`` stretches every duration: 1 for the suite, larger for ``--full``. The daemon's clock
is the rig's (tests/rig/clockshim.c); the truth is the harness's own, unshimmed clock, which
the loopback chronyd serves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rig.harness import Rig, RigDaemon, Score


@dataclass
class Result:
    scenario: str
    score: Score
    to_sync_s: float | None
    facts: dict[str, Any] = field(default_factory=dict)  # what a scenario saw besides scores

    def as_json(self) -> dict:
        s = self.score
        return {"scenario": self.scenario, "queries": s.queries, "coverage": s.coverage,
                "mae_s": s.mae_s, "p99_s": s.p99_s, "half_width_s": s.half_width_s,
                "coverage_exact": s.coverage_exact, "window_s": s.window_s,
                "p99_window_s": s.p99_window_s, "to_sync_s": self.to_sync_s}


def enough(d: RigDaemon, score: Score, scale: float) -> Score:
    """Stretched runs (``scale`` > 1, bench_truth --full) promise ≥ 100·scale queries per
    scenario (≥ 1000 at 10×): top up with answers after the scenario's events (steady state
    under the same clock). The suite's runs (scale 1) are left as they are, so a miss in an
    event's few seconds is not diluted."""
    if scale > 1:
        need = round(100 * scale)
        while score.queries < need:
            d.sample_for(1.0, score=score)
    return score


def _synchronized(rig: Rig, name: str, server: str, offset_s: float,
                  freq_ppm: float) -> tuple[RigDaemon, float]:
    """A rig daemon whose clock is ``offset_s`` and ``freq_ppm`` off, started and waited for
    until synchronized; returns it and the seconds that took."""
    d = rig.daemon(name, [server], start=False)
    d.clock.set(offset_s=offset_s, freq_ppm=freq_ppm)
    d.start()
    return d, d.wait_status()


def offset_and_frequency(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(a) the daemon's clock 50 ms and 20 ppm off; the oscillator runs 20 ppm fast too."""
    d, t = _synchronized(rig, "a", server, 0.050, 20.0)
    d.sample_for(2.0)  # settle past the first fits
    return Result("a-offset-frequency", enough(d, d.sample_for(8.0 * scale), scale), t)


def slewed_by_another_daemon(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(b) another daemon slews CLOCK_REALTIME at 500 ppm, then stops: RAW never moves."""
    d, t = _synchronized(rig, "b", server, 0.010, 5.0)
    score = d.sample_for(2.0)
    d.clock.slew(-500.0, 6.0 * scale)
    d.sample_for(6.0 * scale + 1.0, score=score)
    d.sample_for(2.0, score=score)
    return Result("b-slew-500ppm", enough(d, score, scale), t)


def realtime_steps(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(c) CLOCK_REALTIME stepped by +0.5 ms, −0.5 ms, +2 s, −2 s between queries."""
    d, t = _synchronized(rig, "c", server, -0.020, -10.0)
    score = d.sample_for(1.0)
    for delta in (0.0005, -0.0005, 2.0, -2.0):
        d.clock.step(delta)
        d.sample_for(1.5 * scale, score=score)
    return Result("c-steps", enough(d, score, scale), t)


def leap_second_insert(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(d) a leap second is inserted: a leap-aware NTP server (LeapResponder, not the
    loopback chronyd, whose clock is far from any midnight) announces it (LI = 1) for the
    UTC midnight a few seconds ahead, then repeats 23:59:59; the daemon's kernel inserts it
    too (REALTIME steps back 1 s at its own midnight). Scored before, across and after; the
    daemon's ``status`` must show the pending leap before it."""
    del server  # the reference here is the leap-aware responder
    before_s = 8.0 + 4.0 * scale  # sync (~3 s) and a stretch of answers before the leap
    ref = rig.leap_responder(before_s)
    d = rig.daemon("d", [ref.server], start=False)
    d.clock.set(offset_s=rig.utc_shift_ns / 1e9 + 0.030, freq_ppm=10.0)
    d.clock.leap_at(rig.leap_utc_ns)
    d.start()
    t = d.wait_status()
    facts: dict[str, Any] = {}
    score = Score()
    d.sample_for(2.0, score=score)
    facts["leap_before"] = d.call("status")["leap"]
    until_leap = (rig.leap_ns - time.clock_gettime_ns(time.CLOCK_REALTIME)) / 1e9
    d.sample_for(max(0.0, until_leap) + 6.0 * scale, score=score)
    st = d.call("status")
    facts["leap_after"] = st["leap"]
    facts["realtime_steps"] = st["realtime_steps"]
    facts["queries_after_leap"] = sum(1 for s in score.samples if s.send_ns >= rig.leap_ns)
    facts["queries_before_leap"] = sum(1 for s in score.samples if s.recv_ns < rig.leap_ns)
    return Result("d-leap-insert", enough(d, score, scale), t, facts)


def unsynchronized_kernel_claims_zero(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(g) no NTP reachable; the kernel says synchronized with maxerror 0 (timesyncd) while
    the clock is 50 ms off: the honest answer is the 16 s unsynchronized bound."""
    d = rig.daemon("g", ["127.0.0.1:9"], start=False)
    d.clock.set(offset_s=0.050)
    d.clock.kernel(0, status=0)
    d.start()
    d.wait_status("unsynchronized")
    return Result("g-kernel-maxerror-0", enough(d, d.sample_for(3.0 * scale), scale),
                  None)


def three_hosts_ordered(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(h) three daemons with different clocks stamp events in turn; the MCP server's
    order_events must never order a pair against the true order (tests/rig/fleet.py)."""
    from rig.fleet import three_hosts_ordered as run

    return run(rig, server, scale)


def frequency_wander(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(i) the oscillator's frequency wanders as a 1 ppm sinusoid (period 60 s × scale)."""
    d, t = _synchronized(rig, "i", server, 0.005, 3.0)
    period = 60.0 * scale
    run_s = period / 4 if scale <= 1 else period  # the suite: a quarter; --full: 10 minutes
    score = Score()
    began = time.monotonic()
    while (el := time.monotonic() - began) < run_s:
        d.clock.set(freq_ppm=3.0 + math.sin(2 * math.pi * el / period))
        d.sample_for(1.0, score=score)
    return Result("i-frequency-wander", enough(d, score, scale), t)


def restart_same_boot(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(e) the daemon is stopped (state saved on SIGTERM) and started again in the same
    boot: the restored offset and frequency are served with a bound grown from the saved
    time until fresh samples confirm them."""
    d, t = _synchronized(rig, "e", server, 0.030, 15.0)
    score = d.sample_for(3.0)
    d.stop()
    time.sleep(1.0)
    d.start()
    d.sample_for(4.0 * scale, score=score)
    return Result("e-restart-same-boot", enough(d, score, scale), t)


def reboot(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(f) a reboot: new boot_id, the oscillator restarts near 0 and REALTIME moves 0.8 s
    while the daemon is down (the RTC's error): the old offset must not be served."""
    d, t = _synchronized(rig, "f", server, 0.030, 15.0)
    score = d.sample_for(3.0)
    d.stop()
    d.clock.reboot(raw_start_s=3.0, jump_s=0.8)
    rig.set_boot_id(d, "00000000-0000-4000-8000-000000000002")
    d.start()
    d.sample_for(4.0 * scale, score=score)
    return Result("f-reboot", enough(d, score, scale), t)


# clock.void_after_s for the holdover scenario: the void is then 6 s (6 poll gaps of 1 s,
# ``EngineConfig.void_after_polls``), reached within seconds of the reference going silent
HOLDOVER_VOID_S = 4.0


def holdover(rig: Rig, server: str, scale: float = 1.0) -> Result:
    """(j) the reference goes silent for good: the daemon's clock is 40 ms and 20 ppm off
    and nobody steers it. Past the void (``clock.void_after_s``, here seconds) nothing is
    vouched for: the answer is unsynchronized with at least the kernel's 16 s bound, and
    its midpoint is the line held over, not the system clock 40 ms off (docs/design.md,
    "Holdover"). Scored throughout; ``facts`` keeps the answers past the void apart."""
    del server  # the reference must fall silent: a responder of the rig's own, not chronyd
    ref = rig.responder()
    d = rig.daemon("j", [ref.server], start=False, clock__void_after_s=HOLDOVER_VOID_S)
    d.clock.set(offset_s=0.040, freq_ppm=20.0)
    d.start()
    t = d.wait_status()
    score = d.sample_for(3.0)
    ref.silent = True
    silent_at = time.monotonic()
    while d.query().status != "unsynchronized":  # freerunning first, then past the void
        if time.monotonic() - silent_at > 60.0:
            raise AssertionError(f"daemon j not past the void 60 s after its reference "
                                 f"fell silent; status {d.call('status')}")
        d.sample_for(0.2, score=score)
    void_s = time.monotonic() - silent_at
    past = d.sample_for(3.0 * scale)
    score.extend(past)
    errs = sorted(abs(x.error_ns) for x in past.samples)
    system = sorted(abs(x.system_ns - x.truth_ns) for x in past.samples
                    if x.truth_ns is not None)
    facts = {
        "void_after_silence_s": round(void_s, 1),
        "past_void_queries": past.queries,
        "past_void_statuses": sorted({x.status for x in past.samples}),
        "past_void_min_bound_s": min(x.bound_ns for x in past.samples) / 1e9,
        "past_void_mae_us": round(past.mae_s * 1e6, 1),
        "past_void_max_error_us": round(errs[-1] / 1e3, 1),
        "system_clock_error_ms": round(system[len(system) // 2] / 1e6, 3) if system else None,
    }
    return Result("j-holdover", enough(d, score, scale), t, facts)


SCENARIOS: dict[str, Callable[[Rig, str, float], Result]] = {
    "a": offset_and_frequency,
    "b": slewed_by_another_daemon,
    "c": realtime_steps,
    "d": leap_second_insert,
    "e": restart_same_boot,
    "f": reboot,
    "g": unsynchronized_kernel_claims_zero,
    "h": three_hosts_ordered,
    "i": frequency_wander,
    "j": holdover,
}
