"""Named scenarios: each isolates one thing the engine must get right; ``mixed`` has them all."""

from __future__ import annotations

from chronotickd.sim.model import ClockModel

SCENARIOS: dict[str, tuple[str, ClockModel]] = {
    "drift": ("constant 20 ppm frequency offset, light symmetric queueing",
              ClockModel(freq_ppm=20.0)),
    "wander": ("5 ppm plus a 1.5 ppm temperature-like swing with a 2 h period",
               ClockModel(freq_ppm=5.0, wander_ppm=1.5, wander_period_s=7200.0)),
    "random-walk": ("3 ppm plus random-walk frequency noise (0.5 ppm/√h)",
                    ClockModel(freq_ppm=3.0, rw_ppm_per_sqrt_h=0.5)),
    "spikes": ("10 ppm; 8 % congestion spikes (long delay) and 2 % wrong offsets",
               ClockModel(freq_ppm=10.0, spike_rate=0.08, outlier_rate=0.02)),
    "asymmetric": ("forward path 1 ms longer, queueing 300 µs forward vs 30 µs back; −2 ppm "
                   "(drift adds to the bias, so a lagging method cannot cancel it by chance)",
                   ClockModel(freq_ppm=-2.0, asym_s=1e-3, queue_fwd_s=300e-6,
                              queue_back_s=30e-6)),
    "outage": ("10 ppm with 0.3 ppm wander; no replies for 20 min at 1.5 h and 50 min at 3.5 h",
               ClockModel(freq_ppm=10.0, wander_ppm=0.3, wander_period_s=10800.0,
                          outages=((1.5, 1 / 3), (3.5, 5 / 6)))),
    "step": ("10 ppm; another process steps the system clock by 5 ms at 3 h",
             ClockModel(freq_ppm=10.0, step_at_h=3.0, step_s=-5e-3)),
    "congestion": ("5 ppm; delay bursts: every ~40 min the forward leg queues 1 ms more for "
                   "5 min (offsets biased by half of it while they last)",
                   ClockModel(freq_ppm=5.0, congestion_every_s=2400.0, congestion_len_s=300.0,
                              congestion_queue_s=1e-3)),
    "disciplined": ("a host another daemon keeps within ±100 µs (mean-reverting wander, "
                    "σ 50 µs, τ 10 min) by steering the system clock against an oscillator "
                    "6 ppm off, measured over a noisy path (200 µs queueing)",
                    ClockModel(freq_ppm=-6.0, offset0_s=2e-3, disc_sigma_s=50e-6,
                               disc_tau_s=600.0, queue_fwd_s=200e-6, queue_back_s=200e-6)),
    "mixed": ("all of it: drift, wander, random walk, asymmetric queueing, spikes, wrong "
              "offsets, losses, a 30 min outage and a 3 ms step of the system clock",
              ClockModel(freq_ppm=-12.0, wander_ppm=0.8, wander_period_s=5400.0,
                         rw_ppm_per_sqrt_h=0.2, asym_s=0.3e-3, queue_fwd_s=200e-6,
                         queue_back_s=80e-6, spike_rate=0.04, outlier_rate=0.01,
                         loss_rate=0.03, outages=((2.0, 0.5),), step_at_h=4.2, step_s=3e-3)),
}
