"""NTS cost against one loopback chronyd: NTS-KE handshake time, and the request round
trip of an authenticated NTS exchange vs a plain NTP one (same server, same client code).

    sudo PYTHONPATH=.:clients python benchmarks/bench_nts.py [--n 200] [--ke 20]

Prints medians and p90 in milliseconds. Needs root (chronyd) and the `nts` extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "clients", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from support import chronyd_server  # noqa: E402

from chronotickd.sources import nts  # noqa: E402
from chronotickd.sources.ntp import NtpSettings, NtpSource  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def line(what: str, xs: list[float]) -> str:
    ms = [x * 1e3 for x in xs]
    return (f"{what:<34} n={len(ms):<4} median {statistics.median(ms):8.3f} ms   "
            f"p90 {pct(ms, 0.9):8.3f} ms")


def round_trips(server: dict, n: int) -> list[float]:
    """Wall time of n polls through the real client (socket, checks, NTS crypto)."""
    src = NtpSource(NtpSettings(servers=[server], timeout_s=1.0, burst=1, minpoll_s=0.1),
                    lambda m: None, read_raw_ns=time.time_ns, epoch=0)
    src.step(time.monotonic())  # resolution, and NTS-KE for an NTS server
    out = []
    for _ in range(n):
        for t in src.tracks:
            t.next_poll = 0.0
        began = time.perf_counter()
        src.step(time.monotonic())
        out.append(time.perf_counter() - began)
    rows = src.describe()
    assert all(r["state"] == "ok" for r in rows), rows
    src.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="NTP exchanges of each kind")
    ap.add_argument("--ke", type=int, default=20, help="NTS-KE handshakes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_nts needs root to run the loopback chronyd", file=sys.stderr)
        return 2
    if (missing := nts.available()) is not None:
        print(missing, file=sys.stderr)
        return 2
    with chronyd_server(nts=True) as c:
        ke = []
        for _ in range(args.ke):
            keys = nts.key_exchange("127.0.0.1", c.nts_port, c.port, 5.0, str(c.cert))
            ke.append(keys.handshake_s)
        plain = round_trips({"host": "127.0.0.1", "port": c.port, "minpoll_s": 0.1}, args.n)
        auth = round_trips({"host": "127.0.0.1", "port": c.port, "nts": True,
                            "nts_port": c.nts_port, "trusted_ca": str(c.cert),
                            "minpoll_s": 0.1}, args.n)
    print(line("NTS-KE handshake (TLS 1.3, P-256)", ke))
    print(line("plain NTP poll", plain))
    print(line("NTS poll (AES-SIV, cookies)", auth))
    print(f"NTS extra per poll: {(statistics.median(auth) - statistics.median(plain)) * 1e6:.0f} µs"
          " (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
