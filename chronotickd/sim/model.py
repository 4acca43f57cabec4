"""A local clock against a reference, measured by NTP round trips. Deterministic per seed.

Two clocks, as on a real host (docs/design.md, "time base"): the oscillator (what
CLOCK_MONOTONIC_RAW counts, the trace's time axis) and the system clock CLOCK_REALTIME, which
other processes may step and slew. ``θ(t) = reference − oscillator = offset0 + ∫ freq(t) dt``
with ``freq(t) = freq_ppm + wander_ppm·sin(2πt/period) + random walk``; the wander stands for
temperature, the random walk for oscillator noise. ``δ(t) = REALTIME − RAW`` is what others did
to the system clock (a daemon can read it at any instant, so the trace carries it), and the
truth is the system clock's offset ``true_offset = θ − δ``:

- a *step* of the system clock by someone else (``step_at_h``) moves δ by −step, so the truth
  jumps by ``step_s`` (``step_in_reference`` puts the step in θ instead: the reference moved,
  which nobody can see until the next measurement);
- a host *disciplined* by another daemon (``disc_sigma_s``): that daemon steers δ so that the
  truth is its own residual error, a mean-reverting wander, whatever the oscillator does.

A method that models θ against the oscillator (the engine) is fed ``measured + δ`` and answers
``θ̂ − δ``; a naive one sees only the system clock's offsets.

One NTP exchange per row: forward one-way delay ``base + asym + Exp(queue_fwd)``, back
``base + Exp(queue_back)``; the measured offset is ``truth + (fwd − back)/2`` (RFC 5905
arithmetic) plus timestamp noise, the delay ``fwd + back``. So the half round trip always
covers the path error, as the NTP bound promises, except for *outliers*: wrong offsets at a
normal delay (a misbehaving server), which no honest bound can cover and robust methods must
reject. *Spikes* are congestion on one leg (long delay, offset off by half of it). Outages
and lost packets leave the row's offset and delay empty; the truth is always present.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("high_precision_time", "ntp_offset", "ntp_delay", "true_offset", "realtime_delta")
T0 = 1.7e9  # a realistic epoch for the local time column


@dataclass(frozen=True)
class ClockModel:
    hours: float = 6.0
    row_s: float = 2.0  # one measurement instant per row, like the recorded traces
    offset0_s: float = 1e-3
    freq_ppm: float = 0.0
    wander_ppm: float = 0.0
    wander_period_s: float = 7200.0
    rw_ppm_per_sqrt_h: float = 0.0
    base_delay_s: float = 0.4e-3  # minimum one-way delay, each direction
    asym_s: float = 0.0  # fixed extra one-way delay on the forward path
    queue_fwd_s: float = 40e-6  # mean exponential queueing, forward
    queue_back_s: float = 40e-6  # ... and back
    ts_noise_s: float = 3e-6  # timestamping noise (normal, per measurement)
    spike_rate: float = 0.0  # share of exchanges with a congestion spike on one leg
    spike_scale_s: float = 4e-3  # mean extra one-way delay of a spike
    outlier_rate: float = 0.0  # share of exchanges with a wrong offset at normal delay
    outlier_scale_s: float = 2e-3  # mean |error| of an outlier
    loss_rate: float = 0.0  # share of exchanges that get no reply
    outages: tuple[tuple[float, float], ...] = ()  # (start hour, length hours): no replies
    step_at_h: float | None = None  # the system clock is stepped here ...
    step_s: float = 0.0  # ... changing the offset by this much
    step_in_reference: bool = False  # True: the reference stepped (invisible in δ) instead
    # congestion: bursts (mean ``congestion_every_s`` apart, exponential) lasting
    # ``congestion_len_s`` during which the forward leg queues ``congestion_queue_s`` more
    congestion_every_s: float = 0.0
    congestion_len_s: float = 300.0
    congestion_queue_s: float = 1e-3
    # another daemon disciplines the system clock (steers δ): the true offset is its residual,
    # a mean-reverting (Ornstein–Uhlenbeck) wander of this size and time constant, clipped to
    # ±disc_limit_s, whatever the oscillator does
    disc_sigma_s: float = 0.0
    disc_tau_s: float = 600.0
    disc_limit_s: float = 100e-6


@dataclass(frozen=True)
class SimTrace:
    t: np.ndarray
    offset: np.ndarray  # NaN where no reply
    delay: np.ndarray  # NaN where no reply
    truth: np.ndarray  # the system clock's true offset, θ − δ
    delta: np.ndarray  # δ = REALTIME − RAW: what other processes did to the system clock

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for t, o, d, x, dl in zip(self.t, self.offset, self.delay, self.truth, self.delta,
                                      strict=True):
                w.writerow((f"{t:.6f}", "" if math.isnan(o) else f"{o:.9f}",
                            "" if math.isnan(d) else f"{d:.9f}", f"{x:.9f}", f"{dl:.9f}"))


def simulate(model: ClockModel, seed: int = 0) -> SimTrace:
    """Draw one trace; the same (model, seed) always gives the same numbers."""
    rng = np.random.default_rng(seed)
    n = max(2, int(model.hours * 3600.0 / model.row_s) + 1)
    rel = np.arange(n) * model.row_s
    dt = model.row_s
    phase = rng.uniform(0, 2 * math.pi)
    freq = (model.freq_ppm + model.wander_ppm * np.sin(2 * math.pi * rel / model.wander_period_s
                                                        + phase)) * 1e-6
    if model.rw_ppm_per_sqrt_h > 0:
        sigma = model.rw_ppm_per_sqrt_h * 1e-6 * math.sqrt(dt / 3600.0)
        freq = freq + np.cumsum(rng.normal(0.0, sigma, n))
    theta = model.offset0_s + np.concatenate(([0.0], np.cumsum(freq[:-1] * dt)))
    delta = np.zeros(n)
    if model.disc_sigma_s > 0:
        a = math.exp(-dt / model.disc_tau_s)
        kick = rng.normal(0.0, model.disc_sigma_s * math.sqrt(1 - a * a), n)
        ou = np.empty(n)
        x = 0.0
        for i in range(n):
            x = a * x + kick[i]
            ou[i] = x
        delta = theta - np.clip(ou, -model.disc_limit_s, model.disc_limit_s)
    if model.step_at_h is not None:
        stepped = np.where(rel >= model.step_at_h * 3600.0, model.step_s, 0.0)
        if model.step_in_reference:
            theta = theta + stepped
        else:
            delta = delta - stepped
    truth = theta - delta

    fwd = model.base_delay_s + model.asym_s + rng.exponential(model.queue_fwd_s, n)
    if model.congestion_every_s > 0:
        busy = np.zeros(n, dtype=bool)
        start = rng.exponential(model.congestion_every_s)
        while start < rel[-1]:
            busy |= (rel >= start) & (rel < start + model.congestion_len_s)
            start += model.congestion_len_s + rng.exponential(model.congestion_every_s)
        fwd = fwd + np.where(busy, rng.exponential(model.congestion_queue_s, n), 0.0)
    back = model.base_delay_s + rng.exponential(model.queue_back_s, n)
    spike = rng.random(n) < model.spike_rate
    leg = rng.random(n) < 0.5
    extra = rng.exponential(model.spike_scale_s, n)
    fwd = fwd + np.where(spike & leg, extra, 0.0)
    back = back + np.where(spike & ~leg, extra, 0.0)
    offset = truth + (fwd - back) / 2.0 + rng.normal(0.0, model.ts_noise_s, n)
    delay = fwd + back
    outlier = rng.random(n) < model.outlier_rate
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    offset = offset + np.where(outlier, sign * (0.5e-3 + rng.exponential(model.outlier_scale_s,
                                                                          n)), 0.0)
    lost = rng.random(n) < model.loss_rate
    for start_h, length_h in model.outages:
        lost |= (rel >= start_h * 3600.0) & (rel < (start_h + length_h) * 3600.0)
    offset = np.where(lost, np.nan, offset)
    delay = np.where(lost, np.nan, delay)
    return SimTrace(T0 + rel, offset, delay, truth, delta)
