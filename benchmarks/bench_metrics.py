"""What a Prometheus scrape costs, and whether scraping slows `now` (docs/metrics.md).

Starts one chronotickd with ``metrics.listen`` (against a loopback chronyd when root and
chronyd are available, else with no NTP server), then measures from one client process:

- ``now`` round trips with no scraper, then with a scraper *process* fetching /metrics once
  a second (already 15× a usual scrape interval), then back to back (a stress case: the
  daemon's scrape thread then competes for the GIL with the event loop), p50/p99;
- the scrape itself: latency and body size.

    python benchmarks/bench_metrics.py [--duration 5]

Prints figures; asserts nothing (timed expectations belong here, not in tests).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "clients"), str(REPO / "tests")]

from support import chronyd_server, daemon_process  # noqa: E402

from chronotick_client import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def now_latencies(sock: str, seconds: float) -> list[float]:
    out = []
    with Client(sock) as c:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            c.now()
            out.append(time.perf_counter() - t0)
    return out


def scraper(url: str, period: float, stop: mp.Event, out: mp.Queue) -> None:
    """A separate process (its own GIL), like a real Prometheus."""
    times, size = [], 0
    while not stop.is_set():
        t0 = time.perf_counter()
        size = len(urllib.request.urlopen(url, timeout=5).read())
        times.append(time.perf_counter() - t0)
        stop.wait(max(0.0, period - (time.perf_counter() - t0)))
    out.put((times, size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with contextlib.ExitStack() as stack:
        servers: list[str] = []
        if os.geteuid() == 0:
            with contextlib.suppress(RuntimeError):
                servers = [stack.enter_context(chronyd_server()).server]
        d = stack.enter_context(daemon_process(ntp__servers=servers,
                                               metrics__listen=f"127.0.0.1:{port}"))
        time.sleep(3)
        print(f"daemon against {'loopback chronyd' if servers else 'no NTP server'}")
        results = [("now, no scraper", now_latencies(d.socket, args.duration), None)]
        for label, period in (("scrape every 1 s", 1.0), ("scrape back to back", 0.0)):
            stop, out = mp.Event(), mp.Queue()
            proc = mp.Process(target=scraper, args=(url, period, stop, out))
            proc.start()
            time.sleep(0.2)
            lat = now_latencies(d.socket, args.duration)
            stop.set()
            results.append((f"now, {label}", lat, out.get(timeout=10)))
            proc.join()
    for name, xs, scr in results:
        print(f"{name:<28} n={len(xs):6d}  p50 {statistics.median(xs) * 1e6:7.1f} µs  "
              f"p99 {pct(xs, 0.99) * 1e6:8.1f} µs  max {max(xs) * 1e3:6.2f} ms")
        if scr:
            times, size = scr
            print(f"{'  the scrapes':<28} n={len(times):6d}  p50 "
                  f"{statistics.median(times) * 1e3:7.2f} ms  p99 {pct(times, 0.99) * 1e3:8.2f} ms"
                  f"  body {size} bytes")


if __name__ == "__main__":
    main()
