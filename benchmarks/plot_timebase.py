"""The figure of docs/design.md's "Time base": θ on MONOTONIC_RAW stays smooth while others
slew and step CLOCK_REALTIME, and the served answer stays inside its bound.

A simulated host driven through the pure core (chronotickd/core: Engine, ClockState), the
same code the daemon runs: the oscillator (RAW) runs 20 ppm fast; an NTP server (the truth,
with ±40 µs of noise inside each reply's bound) is polled every 8 s; another daemon slews
REALTIME at −500 ppm for 60 s, then someone steps it +20 ms and later −5 ms. Every second a
query reads both clocks and is scored against the truth.

    python benchmarks/plot_timebase.py [--out docs/img/timebase.png]

Prints the largest |error| / bound ratio (≤ 1: every answer held the truth).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chronotickd.core.engine import Engine, EngineConfig  # noqa: E402
from chronotickd.core.measurement import Measurement  # noqa: E402
from chronotickd.core.timebase import ClockReading  # noqa: E402

EPOCH = 1_800_000_000.0  # whole seconds: REALTIME − RAW at "daemon start"
OSC_PPM = 20.0  # the oscillator runs fast: true time gains 1 − 20e-6 s per raw second
THETA0 = 0.030  # reference − (raw + epoch) at raw 0
POLL_S = 8.0
DELAY_S = 200e-6  # loopback-like round trip; the reply's bound is delay/2
NOISE_S = 40e-6
SLEW = (150.0, 210.0, -500e-6)  # another daemon slews REALTIME: start, end (raw s), rate
STEPS = ((330.0, 0.020), (450.0, -0.005))  # REALTIME stepped at raw instant by seconds
END_S = 600.0


def theta(raw: float) -> float:
    """The truth: reference − (raw + epoch)."""
    return THETA0 - OSC_PPM * 1e-6 * raw


def delta(raw: float) -> float:
    """REALTIME − RAW − epoch: the oscillator's own error plus what others do to REALTIME
    (here REALTIME starts equal to true time and is then slewed and stepped)."""
    d = theta(raw)  # REALTIME started on UTC (as if a previous sync set it)
    start, end, rate = SLEW
    d += rate * (min(raw, end) - start) if raw > start else 0.0
    return d + sum(size for at, size in STEPS if raw >= at)


def run() -> dict[str, list[float]]:
    rng = random.Random(12)
    eng = Engine(EngineConfig(), epoch=EPOCH)
    out: dict[str, list[float]] = {k: [] for k in ("t", "theta_fit", "ref_minus_real", "delta",
                                                   "err", "bound")}
    next_poll = 0.0
    state = None
    raw = 0.0
    while raw <= END_S:
        reading = ClockReading(raw, raw + EPOCH + delta(raw), 2e-7)
        eng.observe_clock(reading)
        if raw >= next_poll:
            noise = rng.uniform(-NOISE_S, NOISE_S)
            eng.add(Measurement.from_ntp(raw, theta(raw) + noise, DELAY_S, source="ntp:sim"))
            next_poll += POLL_S
        state = eng.snapshot(reading)
        a = state.query(reading)
        if a.status.value != "unsynchronized":
            truth = reading.raw + EPOCH + theta(reading.raw)
            out["t"].append(raw)
            out["theta_fit"].append((a.offset + reading.delta(EPOCH)) * 1e3)
            out["ref_minus_real"].append(-(delta(raw) - theta(raw)) * 1e3)
            out["delta"].append(reading.delta(EPOCH) * 1e3)
            out["err"].append((a.system_time + a.offset - truth) * 1e6)
            out["bound"].append(a.bound * 1e6)
        raw += 1.0
    return out


def plot(d: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, mid, bot) = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 1.3, 2]})
    top.plot(d["t"], d["ref_minus_real"], color="tab:red",
             label="reference − REALTIME (what a fit on REALTIME would see)")
    top.plot(d["t"], d["theta_fit"], color="tab:blue", lw=2,
             label="θ = reference − (RAW + epoch), the engine's fit")
    top.set_ylabel("offset (ms)")
    top.legend(loc="upper right", fontsize=8)
    top.set_title("Time base: the fit lives on MONOTONIC_RAW; REALTIME is slewed and stepped")
    mid.plot(d["t"], d["delta"], color="tab:gray")
    mid.set_ylabel("δ = REALTIME − RAW\n− epoch (ms)")
    start, end, _ = SLEW
    for ax in (top, mid, bot):
        ax.axvspan(start, end, color="tab:orange", alpha=0.12)
        for at, _size in STEPS:
            ax.axvline(at, color="tab:purple", ls=":", lw=1)
    mid.text(start + 2, min(d["delta"]), "slew −500 ppm", fontsize=8, va="bottom")
    for at, size in STEPS:
        mid.text(at + 3, min(d["delta"]), f"step {size * 1e3:+.0f} ms", fontsize=8,
                 va="bottom")
    bot.fill_between(d["t"], [-b for b in d["bound"]], d["bound"], color="tab:green",
                     alpha=0.25, label="served bound (±)")
    bot.plot(d["t"], d["err"], color="black", lw=1, label="served time − true time")
    bot.set_ylim(-max(d["bound"][20:]) * 1.3, max(d["bound"][20:]) * 1.3)
    bot.set_ylabel("µs")
    bot.set_xlabel("MONOTONIC_RAW (s)")
    bot.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "timebase.png")
    args = p.parse_args()
    d = run()
    worst = max(abs(e) / b for e, b in zip(d["err"], d["bound"], strict=True))
    print(f"{len(d['t'])} answers; max |error|/bound {worst:.3f}; median bound "
          f"{sorted(d['bound'])[len(d['bound']) // 2]:.1f} µs; figure {args.out}")
    plot(d, args.out)
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
