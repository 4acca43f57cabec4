"""Cost of a corrected-time read: shared memory (Python, C) against the socket and the bare clock.

One run against a real daemon (loopback chronyd when one can be started, so the segment holds a
synchronized fit) prints, per read, p50 and p99 in ns:

* ``time.clock_gettime_ns`` alone (one REALTIME read; the floor of any Python read),
* the Python shm reader, ``ShmReader.now()`` (three clock reads + arithmetic + the socket's
  result dict) and ``ShmReader.now_ns()`` (the same without the dict: a 4-tuple),
* the socket client (``Client.now()`` with ``use_shm=False``: one request/reply),
* the C reader (``clients/c/chronotick_now.c --bench``, compiled here with ``gcc -O2``;
  three vDSO clock_gettime calls, no syscall),

then total reads/s with 1, 4 and 16 reader processes (Python and C). Fast reads are timed in
batches (Python 10 calls written out, C 16) so the timer's own cost does not dominate; p99 is
of batch means. Targets from issue 15: Python p50 ≤ 2 µs, C ≤ 100 ns. The load average is printed
first: on a shared machine every figure grows with it.

    python benchmarks/bench_shm.py [--duration 1] [--no-chronyd]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(REPO / "clients"), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_socket  # noqa: E402  (its daemon and chronyd helpers)

from chronotick_client import Client  # noqa: E402
from chronotick_client.shm import ShmReader  # noqa: E402


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, len(s) * 99 // 100)]


def time_calls(fn: Callable[[], object], duration: float, batch: int) -> tuple[float, float, int]:
    """(p50, p99) ns per call over batches of ``batch`` calls, and the number of calls.
    With ``batch`` 10 the calls are written out (no loop), so neither the timer nor the loop
    is counted in a read."""
    pc = time.perf_counter_ns
    lat: list[float] = []
    end = time.monotonic() + duration
    for _ in range(200):  # warm-up
        fn()
    while time.monotonic() < end:
        for _ in range(100):
            if batch == 10:
                a = pc()
                fn(); fn(); fn(); fn(); fn(); fn(); fn(); fn(); fn(); fn()  # noqa: E702
                lat.append((pc() - a) / 10)
            else:
                a = pc()
                for _ in range(batch):
                    fn()
                lat.append((pc() - a) / batch)
    p50, p99 = percentiles(lat)
    return p50, p99, len(lat) * batch


def _py_reader(path: str, duration: float, out: mp.Queue) -> None:
    reader = ShmReader(path)
    now = reader.now
    n = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for _ in range(1000):
            now()
        n += 1000
    out.put(n)


def py_throughput(path: str, procs: int, duration: float) -> float:
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()
    ps = [ctx.Process(target=_py_reader, args=(path, duration, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    total = sum(q.get(timeout=duration + 30) for _ in ps)
    for p in ps:
        p.join()
    return total / duration


def c_bench(exe: Path, path: str, n: int) -> dict:
    out = subprocess.run([str(exe), "--bench", str(n), path], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def c_throughput(exe: Path, path: str, procs: int, n: int) -> float:
    """Reads/s of ``procs`` concurrent C readers (each ``n`` × 16 reads; wall time of all)."""
    start = time.monotonic()
    ps = [subprocess.Popen([str(exe), "--bench", str(n), path], stdout=subprocess.PIPE,
                           text=True) for _ in range(procs)]
    reads = sum(json.loads(p.communicate(timeout=300)[0])["reads"] for p in ps)
    return reads / (time.monotonic() - start)


def measure(sock: str, shm_path: str, exe: Path | None, duration: float, ntp: bool) -> None:
    client = Client(sock, use_shm=False)
    deadline = time.monotonic() + 30
    while ntp and client.now()["status"] != "synchronized" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)  # one more publish: the segment carries the synced state
    reader = ShmReader(shm_path)
    first = reader.now()
    print(f"daemon: {first['status']} via {first['source']}, "
          f"bound {first['bound_ns'] / 1e3:.1f} µs; segment {shm_path}")
    print(f"{'per read':<34} {'p50 ns':>9} {'p99 ns':>9} {'reads':>10}")
    rows = [
        ("time.clock_gettime_ns (REALTIME)",
         functools.partial(time.clock_gettime_ns, time.CLOCK_REALTIME), 10),
        ("Python shm reader (now())", reader.now, 10),
        ("Python shm reader (now_ns())", reader.now_ns, 10),
        ("socket client (now)", client.now, 1),
    ]
    for name, fn, batch in rows:
        p50, p99, n = time_calls(fn, duration, batch)
        print(f"{name:<34} {p50:>9.0f} {p99:>9.0f} {n:>10}")
    if exe is not None:
        c = c_bench(exe, shm_path, 200_000)
        print(f"{'C reader (ct_shm_now)':<34} {c['p50_ns']:>9} {c['p99_ns']:>9} {c['reads']:>10}")
    print(f"\n{'reads/s':<34} {'1 proc':>12} {'4 procs':>12} {'16 procs':>12}")
    py = [py_throughput(shm_path, k, duration) for k in (1, 4, 16)]
    print(f"{'Python shm reader':<34} " + " ".join(f"{v:>12,.0f}" for v in py))
    if exe is not None:
        cc = [c_throughput(exe, shm_path, k, 200_000) for k in (1, 4, 16)]
        print(f"{'C reader':<34} " + " ".join(f"{v:>12,.0f}" for v in cc))
    print(f"(machine: {os.cpu_count()} CPUs; more reader processes than CPUs contend for them)")
    reader.close()
    client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--no-chronyd", action="store_true", help="run the daemon without NTP")
    args = ap.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    gcc = shutil.which("gcc")
    work = Path(tempfile.mkdtemp(prefix="ct-bench-shm-"))
    try:
        exe: Path | None = None
        if gcc:
            exe = work / "chronotick_now"
            subprocess.run([gcc, "-O2", "-std=c11", "-o", str(exe),
                            str(REPO / "clients/c/chronotick_now.c"), "-lm"], check=True)
        with contextlib.ExitStack() as stack:
            server = None if args.no_chronyd else stack.enter_context(bench_socket.chronyd(work))
            sock, _ = stack.enter_context(bench_socket.daemon(work, server))
            measure(sock, str(work / "shm0"), exe, args.duration, server is not None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
