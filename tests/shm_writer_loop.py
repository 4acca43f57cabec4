"""Rewrite a ChronoTick segment as fast as possible with the daemon's own writer, until SIGTERM.

Every payload derives all its fields from one counter ``i`` (t_ref_ns = i, t_last_ns = 2i,
stale_after_ns = 3i, void_after_ns = 4i, write_raw_ns = 5i, offset_ref = i·1e-9, freq = −i,
leap_raw_ns = 6i, source = "s<i>"), so a reader can tell a torn snapshot from a consistent
one. Prints
``{"writes": N, "seconds": S}`` on exit. Used by tests/test_shm.py and benchmarks/bench_shm.py.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from chronotick_client.shm import Params, pack_payload
from chronotickd.shm import ChronoTickSegment


def params(i: int) -> Params:
    return Params(epoch_ns=0, write_raw_ns=5 * i, write_delta_ns=0, write_interval_ns=10**9,
                  t_ref_ns=i, t_last_ns=2 * i, stale_after_ns=3 * i, void_after_ns=4 * i,
                  offset_ref=i * 1e-9, freq=-float(i), var_offset=0.0, var_freq=0.0,
                  systematic=0.0, confidence_k=3.0, max_drift=1e-6, unsync_bound=16.0,
                  leap_raw_ns=6 * i, state=1, leap=0, leap_flags=0, flags=0,
                  boot_id=bytes(16), source=f"s{i}")


def main() -> None:
    seg = ChronoTickSegment(sys.argv[1], 0o644)
    # packed up front: the loop measures the writer's seqlock, not struct packing
    ring = [pack_payload(params(i)) for i in range(1, 4097)]
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    seg.write(params(0))
    print("ready", flush=True)
    n, start = 0, time.monotonic()
    write = seg.write_payload
    while not stop:
        for p in ring:
            write(p)
        n += len(ring)
    print(json.dumps({"writes": n, "seconds": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    main()
