"""Torn-read checker (Python): N snapshots through ``ShmReader`` while tests/shm_writer_loop.py
rewrites the segment; prints ``{"reads", "torn", "snapshots", "seconds"}``."""

from __future__ import annotations

import json
import sys
import time

from chronotick_client.shm import ShmReader, ShmUnavailable


def main() -> None:
    while True:  # a writer much faster than a Python copy may starve the first snapshot
        try:
            reader = ShmReader(sys.argv[1])
            break
        except ShmUnavailable:
            time.sleep(0.001)
    n = int(sys.argv[2])
    torn = changes = busy = 0
    last = None
    snapshot = reader.snapshot
    start = time.monotonic()
    for _ in range(n):
        try:
            p = snapshot()
        except ShmUnavailable:  # no answer is not a torn answer
            busy += 1
            continue
        if p is last:
            continue
        last = p
        changes += 1
        i = p.t_ref_ns
        if (p.t_last_ns != 2 * i or p.stale_after_ns != 3 * i or p.void_after_ns != 4 * i
                or p.write_raw_ns != 5 * i or p.leap_raw_ns != 6 * i
                or p.offset_ref != i * 1e-9 or p.freq != -float(i)
                or p.source != f"s{i}"):
            torn += 1
    print(json.dumps({"reads": n, "torn": torn, "snapshots": changes, "busy": busy,
                      "seconds": round(time.monotonic() - start, 3)}))


if __name__ == "__main__":
    main()
