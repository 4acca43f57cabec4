"""chronotick-mcp figures: adapter start time and the warm get_time round trip.

* start: from just before the SDK's ``stdio_client`` spawns ``python -m chronotick_mcp`` to the
  end of the MCP ``initialize`` handshake (what an agent's MCP client waits for), N times.
* warm round trip: one ``ClientSession``; ``tools/call get_time`` timed end to end (client
  session → JSON-RPC over stdio → adapter → daemon socket → back, output-schema validation
  included); ``order_events`` (no daemon) and a direct ``chronotick_client`` ``now`` on the
  same socket separate the adapter's share from the daemon's.

Uses ``--socket PATH`` (or $CHRONOTICK_SOCKET) when given, else starts a daemon of its own
(fed by a loopback chronyd when run as root with chrony installed, else serving the system
clock). Run: ``python benchmarks/bench_mcp.py [--calls N] [--starts N] [--socket PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "clients", REPO / "tests"):
    sys.path.insert(0, str(p))

from support import PYTHONPATH, chronyd_server, daemon_process  # noqa: E402

from chronotick_client import Client  # noqa: E402


def params(sock: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "chronotick_mcp", "--socket", sock],
                                 env={"PYTHONPATH": PYTHONPATH}, cwd=str(REPO))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def line(name: str, ms: list[float]) -> str:
    return (f"{name:<34} n={len(ms):<5} p50 {statistics.median(ms):7.3f} ms   "
            f"p99 {pct(ms, 0.99):7.3f} ms   mean {statistics.fmean(ms):7.3f} ms   "
            f"min {min(ms):7.3f} ms")


async def start_times(sock: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        async with stdio_client(params(sock)) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


async def round_trips(sock: str, calls: int) -> dict[str, list[float]]:
    events = {"events": [{"id": "a", "earliest_ns": 1, "latest_ns": 2},
                         {"id": "b", "earliest_ns": 3, "latest_ns": 4}]}
    res: dict[str, list[float]] = {"get_time": [], "order_events": [], "first": []}
    t0 = time.perf_counter()
    async with stdio_client(params(sock)) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        await s.list_tools()  # as agents do; the client then validates outputs
        t1 = time.perf_counter()
        first = await s.call_tool("get_time", {})
        assert not first.is_error, first.content
        res["first"].append((time.perf_counter() - t1) * 1e3)
        res["spawn_to_first_answer"] = [(time.perf_counter() - t0) * 1e3]
        for _ in range(50):  # warm-up: worker threads, connection, caches
            await s.call_tool("get_time", {})
        for name, args in (("get_time", {}), ("order_events", events)):
            for _ in range(calls):
                t = time.perf_counter()
                out = await s.call_tool(name, args)
                res[name].append((time.perf_counter() - t) * 1e3)
                assert not out.is_error
    return res


def direct_now(sock: str, calls: int) -> list[float]:
    ms = []
    with Client(sock) as c:
        for _ in range(50):
            c.now()
        for _ in range(calls):
            t = time.perf_counter()
            c.now()
            ms.append((time.perf_counter() - t) * 1e3)
    return ms


@contextlib.contextmanager
def own_daemon() -> Iterator[tuple[str, str]]:
    try:
        chrony = chronyd_server()
        server = chrony.__enter__()
    except RuntimeError as exc:
        with daemon_process() as d:
            yield d.socket, f"own daemon, no NTP ({exc})"
        return
    try:
        with daemon_process(ntp__servers=[server.server]) as d:
            with Client(d.socket) as c:
                deadline = time.monotonic() + 20
                while c.now()["status"] != "synchronized" and time.monotonic() < deadline:
                    time.sleep(0.2)
            yield d.socket, "own daemon fed by a loopback chronyd"
    finally:
        chrony.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--socket", default=os.environ.get("CHRONOTICK_SOCKET"))
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        if args.socket:
            sock, what = args.socket, "existing daemon"
        else:
            sock, what = stack.enter_context(own_daemon())
        print(f"chronotick-mcp benchmark: {what}, socket {sock}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)")
        starts = anyio.run(start_times, sock, args.starts)
        rt = anyio.run(round_trips, sock, args.calls)
        floor = direct_now(sock, args.calls)
    print(line("adapter start (spawn→initialized)", starts))
    print(line("spawn → first get_time answer", rt["spawn_to_first_answer"]))
    print(line("first get_time (cold connection)", rt["first"]))
    print(line("warm get_time round trip", rt["get_time"]))
    print(line("warm order_events (no daemon)", rt["order_events"]))
    print(line("direct client `now` (no MCP)", floor))


if __name__ == "__main__":
    main()
