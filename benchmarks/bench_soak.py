"""Soak benchmark: 16 client processes against one daemon while its NTP source polls.

A real loopback chronyd (``-x``: the clock is never touched) keeps the NTP source polling
every ``--poll`` seconds. Each client process sends ``now`` (plus some ``status`` and
``future``) at ``--rate`` requests/s on its own persistent connection. Printed per
``--row-seconds`` (default one minute): requests, errors, p50/p99/max latency, the daemon's
RSS and status. At the end: RSS growth since the first row, total errors, and answers whose
bound did not hold the truth (chronyd serves this machine's clock, so the true offset is 0).

    .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--clients 16] [--rate 100]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "clients", ROOT / "tests"):
    sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
from support import chronyd_server, daemon_process  # noqa: E402

from chronotick_client import Client  # noqa: E402


def client_loop(path: str, start: float, end: float, rate: float, row_s: float,
                out: mp.Queue, seed: int) -> None:
    """One client: paced requests; sends (row, latencies µs, errors, dishonest) per row."""
    rng = np.random.default_rng(seed)
    client = Client(path, timeout=2.0)
    period = 1.0 / rate
    row, lat, errors, dishonest = 0, [], 0, 0
    next_t = start + rng.random() * period
    time.sleep(max(0.0, start - time.time()))
    while True:
        now = time.time()
        if now >= end:
            break
        r_idx = max(0, int((now - start) // row_s))
        if r_idx != row:
            out.put((row, lat, errors, dishonest))
            row, lat, errors, dishonest = r_idx, [], 0, 0
        if next_t > now:
            time.sleep(next_t - now)
        next_t += period
        pick = rng.random()
        began = time.perf_counter()
        try:
            if pick < 0.9:
                r = client.now()
                dishonest += abs(r["offset_ns"]) > r["bound_ns"]
            elif pick < 0.95:
                client.status()
            else:
                client.future(5.0)
            lat.append((time.perf_counter() - began) * 1e6)
        except Exception:
            errors += 1
    out.put((row, lat, errors, dishonest))
    client.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rate", type=float, default=100.0, help="requests/s per client")
    ap.add_argument("--row-seconds", type=float, default=60.0)
    ap.add_argument("--poll", type=float, default=1.0, help="NTP poll interval (s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_soak needs root to run the loopback chronyd", file=sys.stderr)
        return 2
    duration = args.minutes * 60
    with chronyd_server() as ntp, daemon_process(
            ntp__servers=[ntp.server], ntp__burst_interval_s=0.5,
            ntp__minpoll_s=args.poll, ntp__maxpoll_s=args.poll) as d:
        pid = d.proc.pid
        with Client(d.socket) as c:
            deadline = time.time() + 30
            while c.now()["status"] != "synchronized" and time.time() < deadline:
                time.sleep(0.2)
        ctx = mp.get_context("fork")
        q: mp.Queue = ctx.Queue()
        start = time.time() + 1.0
        end = start + duration
        procs = [ctx.Process(target=client_loop, args=(d.socket, start, end, args.rate,
                                                       args.row_seconds, q, i))
                 for i in range(args.clients)]
        for p in procs:
            p.start()
        rows: dict[int, dict] = {}
        rss: dict[int, float] = {}
        status: dict[int, str] = {}
        rss0 = rss_mb(pid)
        n_rows = int(np.ceil(duration / args.row_seconds))
        print(f"soak: {args.clients} clients × {args.rate:g} req/s for {args.minutes:g} min, "
              f"NTP poll {args.poll:g} s; daemon pid {pid}, RSS at start {rss0:.1f} MB")
        print(f"{'row':>4} {'t_s':>6} {'requests':>9} {'errors':>6} {'p50_us':>8} "
              f"{'p99_us':>8} {'max_us':>9} {'rss_mb':>7} status")
        printed = 0
        with Client(d.socket) as c:
            while any(p.is_alive() for p in procs) or not q.empty():
                while not q.empty():
                    row, lat, err, dis = q.get()
                    agg = rows.setdefault(row, {"lat": [], "err": 0, "dis": 0, "parts": 0})
                    agg["lat"].extend(lat)
                    agg["err"] += err
                    agg["dis"] += dis
                    agg["parts"] += 1
                t_row = int((time.time() - start) // args.row_seconds)
                if 0 <= t_row < n_rows and t_row not in rss and time.time() >= start + (
                        t_row + 1) * args.row_seconds - 1:
                    rss[t_row] = rss_mb(pid)
                    status[t_row] = c.now()["status"]
                while printed in rows and rows[printed]["parts"] >= args.clients:
                    a = rows[printed]
                    lat = np.array(a["lat"]) if a["lat"] else np.array([np.nan])
                    t_end = (printed + 1) * args.row_seconds
                    print(f"{printed:>4} {t_end:>6.0f} {len(a['lat']):>9} "
                          f"{a['err']:>6} {np.percentile(lat, 50):>8.0f} "
                          f"{np.percentile(lat, 99):>8.0f} {lat.max():>9.0f} "
                          f"{rss.get(printed, rss_mb(pid)):>7.1f} {status.get(printed, '?')}",
                          flush=True)
                    printed += 1
                time.sleep(0.2)
        for p in procs:
            p.join()
        rss_end = rss_mb(pid)
        alive = d.proc.poll() is None
        st = Client(d.socket).status() if alive else {}
    all_lat = np.concatenate([np.array(r["lat"]) for r in rows.values() if r["lat"]])
    errors = sum(r["err"] for r in rows.values())
    dishonest = sum(r["dis"] for r in rows.values())
    first = rss.get(0, rss0)
    print(f"requests              {len(all_lat)} ({len(all_lat) / duration:.0f}/s)")
    print(f"errors                {errors}")
    print(f"latency µs            p50 {np.percentile(all_lat, 50):.0f}, "
          f"p99 {np.percentile(all_lat, 99):.0f}, max {all_lat.max():.0f}")
    print(f"RSS MB                start {rss0:.1f}, after row 0 {first:.1f}, end {rss_end:.1f};"
          f" growth since row 0 {rss_end - first:+.2f} MB")
    print(f"truth outside bound   {dishonest} answers")
    print(f"daemon alive          {alive}; NTP measurements {st.get('measurements')}, "
          f"status {st.get('status')}")
    return 0 if errors == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
