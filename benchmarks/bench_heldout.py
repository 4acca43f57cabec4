"""Simulated clocks the accuracy matrix does not use: the same checks on other parameters.

``bench_accuracy.py`` scores the engine on ten named scenarios; an evaluation on clocks that
are not in this repository scores it too. This bench perturbs them (faster and slower
wander, a stronger random walk, a noisy path, a LAN, a 50 ms step, a step of the reference,
frequent congestion, heavy spikes, 30 % loss, a tightly and a loosely disciplined host, the
reverse asymmetry, a 2 h outage) and prints, per fixed poll, the engine's MAE, its ratio to
the best baseline and its coverage, the adaptive policy against fixed 64 s, then the cells
that fail issue 13's checks (``bench_accuracy.checks``, the matrix's own). Seeds default to
ones no other bench uses. Figures are printed, not asserted.

    nice python benchmarks/bench_heldout.py --seeds 301,302,303,304
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_accuracy import (
    BASELINES,
    FIXED_POLLS,
    aggregate,
    best_baselines,
    checks,
    score_trace,
    sim_trace,
)
from chronotickd.sim.model import ClockModel
from chronotickd.sim.scenarios import SCENARIOS

_DISC = SCENARIOS["disciplined"][1]
VARIANTS: dict[str, ClockModel] = {
    "wander-fast": ClockModel(freq_ppm=-8.0, wander_ppm=3.0, wander_period_s=1800.0),
    "wander-slow": ClockModel(freq_ppm=15.0, wander_ppm=5.0, wander_period_s=21600.0),
    "rw-strong": ClockModel(freq_ppm=1.0, rw_ppm_per_sqrt_h=2.0),
    "noisy-path": ClockModel(freq_ppm=7.0, wander_ppm=0.5, queue_fwd_s=1e-3,
                             queue_back_s=1e-3),
    "lan": ClockModel(freq_ppm=30.0, rw_ppm_per_sqrt_h=0.1, base_delay_s=50e-6,
                      queue_fwd_s=5e-6, queue_back_s=5e-6, ts_noise_s=1e-6),
    "step-50ms": ClockModel(freq_ppm=4.0, step_at_h=2.0, step_s=50e-3),
    "step-ref": ClockModel(freq_ppm=4.0, step_at_h=2.5, step_s=-2e-3,
                           step_in_reference=True),
    "congest-often": ClockModel(freq_ppm=-3.0, congestion_every_s=600.0,
                                congestion_len_s=120.0, congestion_queue_s=3e-3),
    "spikes-heavy": ClockModel(freq_ppm=2.0, spike_rate=0.2, outlier_rate=0.05),
    "lossy": ClockModel(freq_ppm=9.0, wander_ppm=0.5, loss_rate=0.3),
    "disc-tight": dataclasses.replace(_DISC, disc_sigma_s=10e-6, disc_tau_s=120.0,
                                      disc_limit_s=30e-6, queue_fwd_s=30e-6,
                                      queue_back_s=30e-6),
    "disc-internet": dataclasses.replace(_DISC, disc_sigma_s=300e-6, disc_limit_s=1e-3,
                                         queue_fwd_s=2e-3, queue_back_s=1.5e-3),
    # the return leg longer (an asymmetry within the base delay: a leg never goes negative)
    "asym-back": ClockModel(freq_ppm=6.0, asym_s=-0.3e-3, queue_fwd_s=20e-6,
                            queue_back_s=400e-6),
    "outage-long": ClockModel(freq_ppm=-10.0, wander_ppm=0.5, wander_period_s=14400.0,
                              outages=((1.0, 2.0),)),
}
METHODS = (*BASELINES, "engine")


def _job(args: tuple[str, int, float]) -> list[dict]:
    name, seed, hours = args
    return score_trace(sim_trace(name, VARIANTS[name], seed, hours), name, seed, METHODS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="301,302", help="comma-separated seeds")
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    names = [n for n in args.variants.split(",") if n]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        rows = [r for rs in ex.map(_job, [(n, s, args.hours) for n in names for s in seeds])
                for r in rs]
    cells = aggregate(rows)
    by = {(c["scenario"], c["poll"], c["method"]): c for c in cells}
    best = best_baselines(cells)
    print(f"engine MAE µs, ratio to the best baseline, coverage (min over {len(seeds)} seeds)")
    for n in names:
        line = f"{n:<14}"
        for p in (f"{p:g}" for p in FIXED_POLLS):
            e, b = by[(n, p, "engine")], best[(n, p)]
            line += (f" {p:>4}: {e['mae_s'] * 1e6:8.1f} {e['mae_s'] / b['mae_s']:5.2f} "
                     f"{b['method'][:9]:<9} {e['coverage']:.3f}")
        a, f64 = by[(n, "adaptive", "engine")], by[(n, "64", "engine")]
        print(line + f" | adaptive/64 {a['mae_s'] / f64['mae_s']:.3f} "
              f"cov {a['coverage']:.3f}", flush=True)
    fails = checks(cells)
    print("checks: all met" if not fails else "checks failed:\n  " + "\n  ".join(fails))
    return 0


if __name__ == "__main__":
    sys.exit(main())
