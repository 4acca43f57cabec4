"""Fuzz benchmark: ≥ 100 k hostile frames against a real daemon, probing it throughout.

Frames come from tests/hostile.py (garbage bytes, huge and bad length prefixes, truncated
frames, non-msgpack bodies, wrong types, deep nesting, mutated requests, well-formed maps with
bad content pipelined on one connection). Some connections half-close and read the replies,
some drop abruptly. A separate thread sends a well-formed ``now`` on its own connection every
``--probe-interval`` seconds. Prints frames sent, crashes, probes answered, rate, and the
daemon's open fds before and after.

    .venv/bin/python benchmarks/bench_fuzz.py [--frames 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "clients", ROOT / "tests"):
    sys.path.insert(0, str(p))

from hostile import hostile_frame, open_fds, probe_now, send_and_drain, wait_fds  # noqa: E402
from support import daemon_process  # noqa: E402


class Prober(threading.Thread):
    def __init__(self, path: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.ok = self.failed = 0
        self.worst = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            began = time.perf_counter()
            try:
                assert probe_now(self.path, timeout=2.0)["ok"]
                self.ok += 1
            except Exception:
                self.failed += 1
            self.worst = max(self.worst, time.perf_counter() - began)


def abrupt(path: str, data: bytes) -> None:
    """Send and drop the connection without reading anything."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(path)
        with contextlib.suppress(OSError):
            s.sendall(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--probe-interval", type=float, default=0.2)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    limits = dict(server__max_frame_bytes=4096, server__frame_timeout_s=0.5,
                  server__idle_timeout_s=2.0, server__write_timeout_s=1.0)
    with daemon_process(**limits) as d:
        pid = d.proc.pid
        probe_now(d.socket)
        base_fds = open_fds(pid)
        prober = Prober(d.socket, args.probe_interval)
        prober.start()
        sent = conns = 0
        began = time.perf_counter()
        while sent < args.frames and d.proc.poll() is None:
            conns += 1
            style = rng.random()
            if style < 0.5:  # pipeline: frames that keep the connection open, then one more
                batch = []
                while len(batch) < rng.randint(10, 60):
                    data, keeps = hostile_frame(rng, 4096)
                    if keeps:
                        batch.append(data)
                batch.append(hostile_frame(rng, 4096)[0])
                send_and_drain(d.socket, b"".join(batch))
                sent += len(batch)
            elif style < 0.8:
                send_and_drain(d.socket, hostile_frame(rng, 4096)[0])
                sent += 1
            else:
                abrupt(d.socket, hostile_frame(rng, 4096)[0])
                sent += 1
        elapsed = time.perf_counter() - began
        prober.stop.set()
        prober.join()
        crashed = d.proc.poll() is not None
        after = probe_now(d.socket)["ok"] if not crashed else False
        end_fds = wait_fds(pid, base_fds) if not crashed else -1
        tracebacks = d.log().count("Traceback")
    print(f"frames sent           {sent}")
    print(f"connections           {conns}")
    print(f"crashes               {int(crashed)}")
    print(f"tracebacks in log     {tracebacks}")
    print(f"probes answered       {prober.ok} / {prober.ok + prober.failed} "
          f"(worst {prober.worst * 1e3:.1f} ms)")
    print(f"answers after run     {after}")
    print(f"daemon fds            {base_fds} before, {end_fds} after")
    print(f"elapsed               {elapsed:.1f} s")
    print(f"rate                  {sent / elapsed:.0f} frames/s, {conns / elapsed:.0f} conn/s")
    return 0 if not crashed and prober.failed == 0 and end_fds <= base_fds else 1


if __name__ == "__main__":
    sys.exit(main())
