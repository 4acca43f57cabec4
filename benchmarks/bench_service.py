"""Service figures: time from process start to READY=1, and the unit's exposure score.

Start → READY=1 is measured from just before ``Popen`` of the real daemon (as systemd would
fork/exec it) to the arrival of the READY=1 datagram on a socket named by NOTIFY_SOCKET;
it is mostly interpreter start and imports. Run: ``python benchmarks/bench_service.py [N]``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "clients")])
NO_EXTRA = ("import sys; sys.modules['systemd'] = None; "
            "from chronotickd.daemon import main; sys.exit(main())")


def time_to_ready(work: Path, cmd: list[str]) -> float:
    notify = work / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(notify))
        s.settimeout(30)
        env = {**os.environ, "PYTHONPATH": PYTHONPATH, "NOTIFY_SOCKET": str(notify)}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in s.recv(4096):
                pass
            elapsed = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    notify.unlink()
    return elapsed


def exposure() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return "n/a (systemd-analyze not installed)"
    unit = REPO / "packaging/systemd/chronotickd.service"
    out = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, cwd=unit.parent).stdout
    m = re.search(r"Overall exposure level for chronotickd\.service: ([0-9.]+ \S+)", out)
    return m.group(1) if m else "unparsed"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    work = Path(tempfile.mkdtemp(prefix="ct6-bench-"))
    try:
        conf = work / "chronotick.yaml"
        conf.write_text(f"socket: {work}/ct.sock\nstate_dir: {work}/state\n"
                        "ntp:\n  servers: ['127.0.0.1:9']\n  minpoll_s: 60\n"
                        f"shm:\n  path: {work}/shm0\n")
        variants = {
            "python-systemd": [sys.executable, "-m", "chronotickd", "--config", str(conf)],
            "stdlib fallback": [sys.executable, "-c", NO_EXTRA, "--config", str(conf)],
        }
        print(f"systemd-analyze security --offline=true chronotickd.service: {exposure()}")
        for name, cmd in variants.items():
            times = sorted(time_to_ready(work, cmd) * 1e3 for _ in range(runs))
            print(f"start → READY=1 ({name}, {runs} runs): median {statistics.median(times):.0f}"
                  f" ms, min {times[0]:.0f} ms, max {times[-1]:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
