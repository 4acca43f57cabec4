"""Latency and throughput of the daemon's ``now`` against a bare asyncio msgpack echo server.

Both servers run as separate processes and are measured in the same run, side by side, with the
same client code and the same framing (4-byte big-endian length + msgpack map): the echo server
is the floor any asyncio msgpack server on this machine can reach, so the ratios say what the
daemon's own work (dispatch, the O(1) query, ns conversion) costs on top of it.

Each case runs N client *processes* (one connection each, one request in flight), for
``--duration`` seconds after a short warm-up. Printed: p50/p99 round-trip latency as seen by the
client, total throughput, and the daemon/floor ratios (targets: p99 ≤ 1.5×, throughput at 16
clients ≥ 0.7×). Rounds alternate floor and daemon; the median of the rounds is printed.

    python benchmarks/bench_socket.py [--duration 1] [--clients 1,16] [--rounds 5]

The daemon runs against a loopback chronyd when one can be started (root, chronyd installed),
so ``now`` takes the synchronized path with an NTP thread polling beside it; otherwise with no
NTP server (``--no-chronyd`` forces that).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parent.parent
HEADER = struct.Struct(">I")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(REPO), str(REPO / "clients"), os.environ.get("PYTHONPATH", "")])}

# The floor: the least an asyncio server can do per request with this framing (read one frame,
# decode the map, encode a reply map, write it). Run with ``python -c`` as its own process.
ECHO_SERVER = r'''
import asyncio, struct, sys, msgpack
HEADER = struct.Struct(">I")

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data):
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (n,) = HEADER.unpack_from(buf)
            if len(buf) < 4 + n:
                return
            req = msgpack.unpackb(bytes(buf[4:4 + n]), raw=False)
            del buf[:4 + n]
            body = msgpack.packb({"v": 1, "id": req.get("id"), "ok": True, "result": req})
            self.transport.write(HEADER.pack(len(body)) + body)

async def main(path):
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main(sys.argv[1]))
'''


@dataclass
class Result:
    p50_us: float
    p99_us: float
    rps: float
    n: int
    cpu_us: float  # server process CPU time per request (user + system), load-independent


# -- clients ---------------------------------------------------------------------------------
def _client(path: str, start_at: float, warmup: float, duration: float, out: Connection) -> None:
    """One client process: a blocking request/response loop on one connection."""
    body = msgpack.packb({"v": 1, "id": 1, "op": "now"})
    frame = HEADER.pack(len(body)) + body
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    recv, send = s.recv, s.sendall

    def one() -> None:
        send(frame)
        data = recv(65536)
        while len(data) < 4 or len(data) < 4 + HEADER.unpack_from(data)[0]:
            more = recv(65536)
            if not more:
                raise ConnectionError("server closed the connection")
            data += more

    # check once that the server really answers `now` (the floor echoes the request)
    send(frame)
    first = recv(65536)
    reply = msgpack.unpackb(first[4:], raw=False)
    if not reply.get("ok"):
        raise RuntimeError(f"server refused `now`: {reply}")
    while time.monotonic() < start_at:
        time.sleep(0.001)
    clock = time.perf_counter_ns
    measure_from = start_at + warmup
    warm = 0
    while time.monotonic() < measure_from:
        one()
        warm += 1
    lat: list[int] = []
    append = lat.append
    t_end = clock() + int(duration * 1e9)
    t1 = clock()
    while t1 < t_end:
        t0 = t1
        one()
        t1 = clock()
        append(t1 - t0)
    s.close()
    out.send((warm, lat))
    out.close()


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(path: str, pid: int, clients: int, duration: float, warmup: float) -> Result:
    ctx = mp.get_context("fork")
    start_at = time.monotonic() + 0.3 + 0.02 * clients
    pipes, procs = [], []
    for _ in range(clients):
        recv_end, send_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client, args=(path, start_at, warmup, duration, send_end))
        p.start()
        send_end.close()
        pipes.append(recv_end)
        procs.append(p)
    cpu0 = _cpu_s(pid)
    lat: list[int] = []
    total = 0
    for pipe in pipes:
        warm, got = pipe.recv()
        lat.extend(got)
        total += warm + len(got)
    cpu1 = _cpu_s(pid)
    for p in procs:
        p.join(10)
        if p.exitcode != 0:
            raise RuntimeError(f"a client process failed (exit {p.exitcode})")
    lat.sort()
    n = len(lat)
    return Result(
        p50_us=lat[n // 2] / 1e3,
        p99_us=lat[min(n - 1, int(n * 0.99))] / 1e3,
        rps=n / duration,
        n=n,
        cpu_us=(cpu1 - cpu0) / max(total, 1) * 1e6,
    )


# -- servers ---------------------------------------------------------------------------------
def _wait_socket(path: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {path}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def echo_server(work: Path) -> Iterator[tuple[str, int]]:
    path = str(work / "echo.sock")
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, path], env=ENV,
                            stdout=subprocess.DEVNULL)
    try:
        _wait_socket(path, proc, "echo server")
        yield path, proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def chronyd(work: Path) -> Iterator[str | None]:
    """A loopback chronyd that never touches the clock (-x), or None when it cannot run."""
    exe = shutil.which("chronyd") or "/usr/sbin/chronyd"
    if os.geteuid() != 0 or not os.path.exists(exe):
        yield None
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cdir = work / "chronyd"
    cdir.mkdir(mode=0o700)
    conf = cdir / "chrony.conf"
    conf.write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 1\n"
                    f"cmdport 0\nbindcmdaddress {cdir}/chronyd.sock\n"
                    f"pidfile {cdir}/chronyd.pid\ndriftfile {cdir}/drift\n")
    proc = subprocess.Popen([exe, "-x", "-d", "-f", str(conf), "-u", "root"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield f"127.0.0.1:{port}" if proc.poll() is None else None
    finally:
        _stop(proc)


@contextlib.contextmanager
def daemon(work: Path, ntp_server: str | None, models: bool = False
           ) -> Iterator[tuple[str, int]]:
    path = str(work / "ct.sock")
    servers = f"['{ntp_server}']" if ntp_server else "[]"
    conf = work / "chronotick.yaml"
    conf.write_text(f"socket: {path}\nstate_dir: {work / 'state'}\nlog_level: warning\n"
                    f"ntp:\n  servers: {servers}\n  burst_interval_s: 0.5\n"
                    f"  minpoll_s: 2\n  maxpoll_s: 2\n  timeout_s: 0.5\n"
                    f"model:\n  enabled: {'true' if models else 'false'}\n"
                    f"shm:\n  path: {work / 'shm0'}\n")
    log = open(work / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "chronotickd", "--config", str(conf)],
                            env=ENV, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_socket(path, proc, "chronotickd")
        yield path, proc.pid
    finally:
        _stop(proc)
        log.close()


def _now_status(path: str) -> str:
    body = msgpack.packb({"v": 1, "id": 1, "op": "now"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(HEADER.pack(len(body)) + body)
        data = s.recv(65536)
    res = msgpack.unpackb(data[4:], raw=False)["result"]
    return f"{res['status']} via {res['source']}"


def _models_loaded(path: str) -> bool:
    body = msgpack.packb({"v": 1, "id": 2, "op": "status"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(HEADER.pack(len(body)) + body)
        (length,) = HEADER.unpack(s.recv(4))
        data = b""
        while len(data) < length:
            data += s.recv(length - len(data))
    models = msgpack.unpackb(data, raw=False)["result"].get("models") or {}
    return any(isinstance(m, dict) and m.get("loaded") for m in models.values())


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1.0, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds per case")
    ap.add_argument("--clients", default="1,16", help="comma-separated client process counts")
    ap.add_argument("--rounds", type=int, default=5, help="floor/daemon alternations per case")
    ap.add_argument("--no-chronyd", action="store_true", help="run the daemon without NTP")
    ap.add_argument("--models", action="store_true",
                    help="run the daemon with the Chronos-Bolt forecasters on (model.enabled)")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]

    work = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            ntp = None if args.no_chronyd else stack.enter_context(chronyd(work))
            echo, echo_pid = stack.enter_context(echo_server(work))
            dmn, dmn_pid = stack.enter_context(daemon(work, ntp, args.models))
            if ntp:  # let the daemon synchronize so `now` takes the full path
                deadline = time.monotonic() + 15
                while (not _now_status(dmn).startswith("synchronized")
                       and time.monotonic() < deadline):
                    time.sleep(0.2)
            if args.models:  # torch loads in the worker thread: measure once it has
                deadline = time.monotonic() + 60
                while not _models_loaded(dmn) and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(3)  # a few inference rounds
            load = os.getloadavg()
            print(f"bench_socket: {os.cpu_count()} CPUs, load average {load[0]:.2f} "
                  f"{load[1]:.2f} {load[2]:.2f}; python {sys.version.split()[0]}")
            print(f"daemon: {_now_status(dmn)}"
                  f"{f' (loopback chronyd {ntp})' if ntp else ' (no NTP server)'}"
                  f"{', forecasters on' if args.models else ''}; "
                  f"{args.rounds} round(s) × {args.duration:g} s per case, median shown")
            print()
            hdr = (f"{'clients':>7}  {'server':<7} {'p50 µs':>9} {'p99 µs':>9} "
                   f"{'req/s':>9} {'requests':>9} {'server CPU µs/req':>18}")
            print(hdr)
            print("-" * len(hdr))
            summary = []
            for n in counts:
                rounds: dict[str, list[Result]] = {"floor": [], "daemon": []}
                for _ in range(args.rounds):
                    rounds["floor"].append(run_case(echo, echo_pid, n, args.duration,
                                                    args.warmup))
                    rounds["daemon"].append(run_case(dmn, dmn_pid, n, args.duration,
                                                     args.warmup))
                med = {k: Result(statistics.median(r.p50_us for r in v),
                                 statistics.median(r.p99_us for r in v),
                                 statistics.median(r.rps for r in v),
                                 sum(r.n for r in v),
                                 statistics.median(r.cpu_us for r in v))
                       for k, v in rounds.items()}
                for name in ("floor", "daemon"):
                    r = med[name]
                    print(f"{n:>7}  {name:<7} {r.p50_us:>9.1f} {r.p99_us:>9.1f} "
                          f"{r.rps:>9.0f} {r.n:>9} {r.cpu_us:>18.1f}")
                f, d = med["floor"], med["daemon"]
                summary.append((n, d.p50_us / f.p50_us, d.p99_us / f.p99_us, d.rps / f.rps,
                                d.cpu_us / f.cpu_us))
            print()
            print("ratios daemon/floor (targets: p99 ≤ 1.5, throughput at 16 clients ≥ 0.7)")
            for n, r50, r99, rtp, rcpu in summary:
                ok99 = "ok" if r99 <= 1.5 else "OVER"
                oktp = ("ok" if rtp >= 0.7 else "UNDER") if n >= 16 else "-"
                print(f"{n:>7} clients: p50 {r50:.2f}×  p99 {r99:.2f}× [{ok99}]  "
                      f"throughput {rtp:.2f}× [{oktp}]  server CPU {rcpu:.2f}×")
            load = os.getloadavg()
            print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
