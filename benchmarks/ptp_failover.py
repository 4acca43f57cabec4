"""Time PTP → NTP failover and the return to PTP with real parts; prints the figures.

Needs root, iproute2 (ip netns), linuxptp and chrony. Starts a loopback chronyd (-x), a
ptp4l pair in two network namespaces (both free-running: the clock is never adjusted) and
the real daemon, then kills and restarts the PTP master ``--cycles`` times.

    .venv/bin/python benchmarks/ptp_failover.py [--cycles 3] [--poll 2] [--settle 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "clients", ROOT / "tests"):
    sys.path.insert(0, str(p))

from ptp_support import failover_scenario, ptp_pair, ptp_skip_reason  # noqa: E402
from support import chronyd_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--poll", type=float, default=2.0, help="ptp.poll_interval_s")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds on PTP before the steady-state bound is read")
    args = ap.parse_args()
    reason = ptp_skip_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    with chronyd_server() as ntp, ptp_pair() as pair:
        run = failover_scenario(pair, ntp.server, poll_interval_s=args.poll,
                                cycles=args.cycles, settle_s=args.settle)
    print(f"ptp.poll_interval_s            {args.poll:g} s")
    print(f"daemon start -> source ptp     {run.to_ptp_s:.1f} s "
          f"(bound {run.ptp_bound_s * 1e6:.1f} µs)")
    if run.ptp_bound_settled_s is not None:
        print(f"bound on ptp after {args.settle:g} s       {run.ptp_bound_settled_s * 1e6:.1f} µs")
    for i, (a, b, nb) in enumerate(zip(run.to_ntp_s, run.back_to_ptp_s, run.ntp_bound_s,
                                       strict=True)):
        print(f"cycle {i + 1}: master killed -> ntp {a:.1f} s ({a / args.poll:.2f} polls, "
              f"ntp bound {nb * 1e6:.1f} µs); restarted -> ptp {b:.1f} s")
    print(f"failover to ntp: max {max(run.to_ntp_s):.1f} s, median "
          f"{statistics.median(run.to_ntp_s):.1f} s; back to ptp: max "
          f"{max(run.back_to_ptp_s):.1f} s")
    print("sources while the master was dead:\n" + run.sources_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
