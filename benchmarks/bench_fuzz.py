"""Fuzz benchmark: every parser target coverage-guided under atheris, then ≥ 100 k hostile
frames against a real daemon, probing it throughout.

Parser targets (tests/fuzz_targets.py ``TARGETS``: the wire decoder and request handling, pmc
output, the config loader, the state file, and whatever optional modules plug in, such as
NTP/NTS parsing) each run in a child process under atheris (libFuzzer) for ``--runs``
executions from the seeds in tests/fuzz_corpus/<name>/ (copied: the corpus in git stays the
seeds). Per target it prints executions, crashes, hangs (an input running over ``--timeout``)
and the coverage reached; a crashing input is kept under ``--artifacts`` and its traceback
printed. Without atheris (``pip install atheris``) those targets are skipped with a note.

The socket target: frames come from tests/hostile.py (garbage bytes, huge and bad length
prefixes, truncated frames, non-msgpack bodies, wrong types, deep nesting, mutated requests,
well-formed maps with bad content pipelined on one connection). Some connections half-close
and read the replies, some drop abruptly. A separate thread sends a well-formed ``now`` on its
own connection every ``--probe-interval`` seconds. Prints frames sent, crashes, probes
answered, rate, and the daemon's open fds before and after.

    .venv/bin/python benchmarks/bench_fuzz.py [--runs 100000] [--frames 100000] [--only wire,…]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "clients", ROOT / "tests"):
    sys.path.insert(0, str(p))


def child(name: str, libfuzzer_args: list[str]) -> None:
    """Run one target under atheris (this process is the child ``parser_targets`` starts)."""
    import atheris

    # our code only: instrumenting PyYAML too makes the config target ten times slower
    with atheris.instrument_imports(include=["chronotickd", "chronotick_client",
                                             "fuzz_targets"]):
        import fuzz_targets
    atheris.Setup([sys.argv[0], *libfuzzer_args], fuzz_targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--child":
    child(sys.argv[2], sys.argv[3:])

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


def run_target(name: str, runs: int, timeout_s: int, artifacts: Path) -> dict:
    """One target for ``runs`` executions in an atheris child; its figures."""
    work = Path(tempfile.mkdtemp(prefix=f"ct-fuzz-{name}-"))
    corpus = work / "corpus"
    seeds = ROOT / "tests" / "fuzz_corpus" / name
    if seeds.is_dir():
        shutil.copytree(seeds, corpus)
    else:
        corpus.mkdir()
    art = artifacts / name
    art.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", name, str(corpus), f"-runs={runs}",
           f"-timeout={timeout_s}", "-rss_limit_mb=2048", "-max_len=4096",
           f"-artifact_prefix={art}/", "-print_final_stats=1"]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), str(ROOT / "clients"), str(ROOT / "tests")])})
    elapsed = time.perf_counter() - began
    out = proc.stdout + proc.stderr
    done = re.search(r"Done (\d+) runs", out)
    stats = re.findall(r"^#(\d+)\s", out, re.M)
    execs = int(done[1]) if done else (int(stats[-1]) if stats else 0)
    cov = re.findall(r"cov: (\d+)", out)
    crashes = sorted(art.glob("crash-*")) + sorted(art.glob("oom-*"))
    hangs = sorted(art.glob("timeout-*")) + sorted(art.glob("slow-unit-*"))
    shutil.rmtree(work, ignore_errors=True)
    crash_text = ""
    if proc.returncode != 0 and not (crashes or hangs):  # the harness itself failed
        crash_text = out[-3000:]
    elif crashes or hangs:
        m = re.search(r"=== Uncaught Python exception: ===.*?(?=\n==|\Z)", out, re.S)
        crash_text = m[0] if m else out[-3000:]
    return {"name": name, "execs": execs, "crashes": len(crashes) + (1 if crash_text and not
                                                                       (crashes or hangs) else 0),
            "hangs": len(hangs), "cov": int(cov[-1]) if cov else 0, "elapsed": elapsed,
            "detail": crash_text, "artifacts": [str(p) for p in crashes + hangs]}


def parser_targets(args: argparse.Namespace) -> int:
    """Every registered parser target under atheris; prints a table, returns failures."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris not installed (pip install atheris): parser targets skipped; "
              "tests/test_fuzz_targets.py still runs them under hypothesis")
        return 0
    import fuzz_targets

    names = [n for n in fuzz_targets.TARGETS if not args.only or n in args.only]
    fuzz_targets.cleanup()
    print(f"{'target':<18}{'executions':>12}{'crashes':>9}{'hangs':>7}{'coverage':>10}"
          f"{'exec/s':>9}")
    bad = 0
    for name in names:
        r = run_target(name, args.runs, args.timeout, Path(args.artifacts))
        rate = r["execs"] / r["elapsed"] if r["elapsed"] else 0
        print(f"{name:<18}{r['execs']:>12}{r['crashes']:>9}{r['hangs']:>7}{r['cov']:>10}"
              f"{rate:>9.0f}", flush=True)
        if r["crashes"] or r["hangs"] or r["execs"] < args.runs:
            bad += 1
            print(f"  -> {', '.join(r['artifacts']) or 'no artifact'}\n{r['detail']}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100_000, help="executions per parser target")
    ap.add_argument("--timeout", type=int, default=5, help="seconds before an input is a hang")
    ap.add_argument("--artifacts", default="/tmp/chronotick-fuzz",
                    help="where crashing/hanging inputs are kept")
    ap.add_argument("--only", type=lambda s: s.split(","), default=None,
                    help="comma-separated target names ('socket' is the daemon run)")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--probe-interval", type=float, default=0.2)
    args = ap.parse_args()
    bad = parser_targets(args)
    if args.only and "socket" not in args.only:
        return 1 if bad else 0
    return socket_target(args) or (1 if bad else 0)


def socket_target(args: argparse.Namespace) -> int:
    print("\nsocket target: hostile frames against a real daemon")
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
