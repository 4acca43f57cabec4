"""Forecaster cost: inference latency per model on one thread, and the daemon's steady state.

1. p50/p99 of one forecast (``Forecaster.predict``: residual prep + Bolt forward) for the
   short (context 100) and long (context 300) model, torch on 1 thread.
2. The real daemon against a real chronyd on loopback (polling every ``--interval`` s), with
   ``model.enabled`` false and true: after a warm-up, CPU % of one core and RSS over
   ``--seconds`` from /proc/PID/stat and /proc/PID/status, and ``now`` round-trip p50/p99
   through the real client.

Run: ``python benchmarks/bench_forecast.py [--seconds 60] [--interval 2]`` (needs root and
chronyd for part 2; part 1 always runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "clients", REPO / "tests"):
    sys.path.insert(0, str(p))


def inference(n: int) -> None:
    from chronotickd.forecast.core import LONG, SHORT
    from chronotickd.forecast.forecaster import Forecaster
    from chronotickd.forecast.loader import load_pipeline

    pipe = load_pipeline(None, threads=1)
    rng = np.random.default_rng(0)
    t = np.arange(400) * 16.0
    y = 1e-3 + 2e-6 * t + rng.normal(0, 50e-6, len(t))
    print(f"inference, 1 torch thread, {n} runs each")
    print(f"{'model':8} {'context':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for spec in (SHORT, LONG):
        f = Forecaster(spec.name, pipe, spec.context, spec.horizon_s, spec.refresh_s)
        for _ in range(10):
            f.predict(t, y)
        f.timings_ms.clear()
        wall = []
        for i in range(n):
            t0 = time.perf_counter()
            f.predict(t[: 300 + i % 100], y[: 300 + i % 100])
            wall.append((time.perf_counter() - t0) * 1e3)
        w = np.asarray(wall)
        print(f"{spec.name:8} {spec.context:7d} {np.percentile(w, 50):8.2f} "
              f"{np.percentile(w, 99):8.2f}")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon_run(server: str, enabled: bool, seconds: float, interval: float) -> dict:
    from support import daemon_process

    from chronotick_client.client import Client

    with daemon_process(ntp={"servers": [server], "burst": 8, "burst_interval_s": 0.3,
                             "minpoll_s": interval, "maxpoll_s": interval,
                             "timeout_s": 0.5},
                        model={"enabled": enabled}) as d:
        pid = d.proc.pid
        with Client(d.socket) as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # warm-up done and models forecasting
                st = c.status()
                if st.get("warmup_progress", 0) >= 1 and (
                        not enabled or st.get("models", {}).get("long", {}).get("active")):
                    break
                time.sleep(0.5)
            time.sleep(3)
            cpu0, t0 = proc_cpu_s(pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = proc_cpu_s(pid), time.monotonic()
            rss = proc_rss_mb(pid)
            lat = []
            for _ in range(2000):
                a = time.perf_counter()
                c.now()
                lat.append((time.perf_counter() - a) * 1e6)
            models = c.status().get("models", {})
    lat.sort()
    return {"cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_mb": rss,
            "now_p50_us": statistics.median(lat), "now_p99_us": lat[int(0.99 * len(lat))],
            "models": models}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--skip-daemon", action="store_true")
    args = ap.parse_args()
    inference(args.runs)
    if args.skip_daemon:
        return
    from support import chronyd_server

    if shutil.which("chronyd") is None and not Path("/usr/sbin/chronyd").exists():
        print("daemon: skipped (chronyd not installed)")
        return
    with chronyd_server() as ch:
        rows = {name: daemon_run(ch.server, on, args.seconds, args.interval)
                for name, on in (("models off", False), ("models on", True))}
    print(f"\ndaemon steady state, NTP poll {args.interval:g} s, {args.seconds:g} s measured")
    print(f"{'':11} {'CPU % 1 core':>12} {'RSS MB':>8} {'now p50 µs':>11} {'now p99 µs':>11}")
    for name, r in rows.items():
        print(f"{name:11} {r['cpu_pct']:12.2f} {r['rss_mb']:8.1f} {r['now_p50_us']:11.1f} "
              f"{r['now_p99_us']:11.1f}")
    m = rows["models on"]["models"]
    for name in ("short", "long"):
        row = m.get(name, {})
        print(f"{name}: in-daemon inference p50 {row.get('inference_p50_ms')} ms, p99 "
              f"{row.get('inference_p99_ms')} ms, weight {row.get('weight')}, "
              f"spread {row.get('spread_ns')} ns")
    print(f"engine: {m.get('engine')}")


if __name__ == "__main__":
    main()
