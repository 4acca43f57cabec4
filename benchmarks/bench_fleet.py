"""A fleet of chronotickd daemons on one machine, each under the clock rig, scored against truth.

Starts N daemons (default 32), each LD_PRELOADed with the rig's clock shim and its own
oscillator (offsets within ±100 ms, frequency errors within ±50 ppm, half of them wandering,
a quarter stepped and a quarter slewed at ±500 ppm by "another daemon" mid-run), all against
one real chronyd (-x) on loopback, each serving Prometheus metrics on its own port. Then:

- queries every daemon in turn (`now`), scoring each answer against the harness's own clock;
- scrapes every metrics endpoint over HTTP (prometheus-client's parser) and checks the served
  offset ± bound against the true offset, and the counts against what the harness did;
- treats every answer as an event stamped on that host and orders them, 100 at a time, with
  the MCP server's ``order_events`` (a share through a real MCP client): 0 violations;
- prints fleet-wide coverage, MAE, p99, the worst host, RSS per daemon (/proc/PID/status
  VmRSS) and CPU seconds (/proc/PID/stat).

    python benchmarks/bench_fleet.py --quick [--json out.json] [--plot docs/img/fleet.png]
    python benchmarks/bench_fleet.py --hosts 64 --duration 600
    python benchmarks/bench_fleet.py --hosts 6 --stagger 0 --starve 10 --starve-s 45  # saturated

Needs root (chronyd, setpriv) and gcc. Every daemon and chronyd is killed by PID at the end,
on Ctrl-C and on SIGTERM too (exit status 130), also when the bench was started with SIGINT
ignored or blocked, as a shell starts a background command. Exits 1 when a goal is missed
(coverage ≥ 0.99, 0 ordering violations, every scrape parsed with counts that agree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

if __name__ == "__main__":
    # Before the imports below, which take seconds on a loaded machine: a Ctrl-C during them
    # must not be lost when SIGINT came in ignored or blocked (StopSignals says why). Nothing
    # runs yet, so Python's own KeyboardInterrupt will do until main() takes over.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO), str(REPO / "clients")]

from rig.fleet import (  # noqa: E402
    CpuStarver,
    Fleet,
    Host,
    ScrapeCheck,
    cpu_seconds,
    dump,
    fleet_score,
    host_rows,
    mcp_stamp_and_order,
    order_stamps,
    settled,
    worst_host,
)
from rig.harness import Rig  # noqa: E402
from support import chronyd_server  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=32, help="daemons to run (default 32)")
    p.add_argument("--quick", action="store_true", help="60 s of measuring (≤ 3 min in all)")
    p.add_argument("--duration", type=float, help="seconds of measuring (default 300; "
                   "--quick: 60)")
    p.add_argument("--every", type=float, default=0.25, help="seconds between query rounds")
    p.add_argument("--poll", type=float, default=2.0, help="NTP poll interval of each daemon")
    p.add_argument("--settle", type=float, default=10.0,
                   help="also score the answers from this many seconds into measuring on")
    p.add_argument("--stagger", type=float, default=0.5,
                   help="seconds between daemon starts, as hosts boot independently "
                        "(0: all at once, a CPU storm on this one machine)")
    p.add_argument("--starve", type=float, metavar="PERCENT",
                   help="cap all daemons together at PERCENT of one core (a cgroup) from "
                        "their start, as on a saturated host")
    p.add_argument("--starve-s", type=float, default=30.0,
                   help="seconds after the first start when the cap is lifted (default 30)")
    p.add_argument("--seed", type=int, default=1, help="seed of the oscillators' plan")
    p.add_argument("--mcp-rounds", type=int, default=10,
                   help="events each of 3 hosts stamps through a real MCP client (0: none)")
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG: per-host error and bound")
    p.add_argument("--replot", type=Path, metavar="JSON",
                   help="only redraw --plot from a JSON this bench wrote (no daemons)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.quick else 300.0
    return args


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class StopSignals:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, whatever this process
    inherited, until the reaping begins; from then on they are only noted.

    Why install SIGINT at all: Python sets up its KeyboardInterrupt for SIGINT at start-up
    only when SIGINT is at its default. A shell that runs a command in the background without
    job control (a CI script's ``pytest ... &``, many job runners) starts it with SIGINT
    ignored, exec keeps that for every descendant, and the bench then ignored ``kill -INT``
    and Ctrl-C altogether: it measured on for the whole --duration with every daemon running
    (tests/test_fleet.py timed out after 60 s). A blocked signal mask is inherited the same
    way, so both signals are unblocked. SIGTERM's default would kill the bench without its
    clean-up and leave the daemons running.

    Why only noted once reaping: a second Ctrl-C, or the SIGTERM a supervisor sends after a
    SIGINT, would otherwise raise inside the clean-up it interrupts (between two daemons'
    kills) and leave the rest running. Until then every signal raises again, so a swallowed
    KeyboardInterrupt (a finaliser's "Exception ignored in ...") cannot keep the bench going.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal, once one came
        self.reaping = False

    def install(self) -> None:
        """Handlers first, then unblock: a signal that waited in the mask is delivered at
        once, to the handler, not discarded as ignored."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if not self.reaping:
            raise KeyboardInterrupt

    def ignore(self) -> None:
        """Once everything is reaped a late signal has nothing left to stop; ignored, it
        cannot turn the exit status into a death by signal either (while it shuts down,
        Python puts the signals it handled back to their defaults, not ignored ones)."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def own_children() -> dict[int, str]:
    """PID → state ("Z": exited, not yet waited for) of every process whose parent is this
    one, from /proc/PID/stat: exactly the processes this bench started itself."""
    me, out = os.getpid(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(ppid) == me:
            out[int(entry.name)] = state
    return out


def reap_children(grace_s: float = 5.0) -> list[int]:
    """SIGTERM every child still running, SIGKILL what is left after ``grace_s``, and wait
    for every child; returns the PIDs that were still running.

    The net under the orderly clean-up: a child whose ``Popen`` never came back (an interrupt
    between its fork and the assignment) or whose kill an exception skipped is found here
    all the same. Our own children only, so only what this bench started; none of their PIDs
    can be reused before we have waited for it."""
    kids = own_children()
    running = sorted(pid for pid, state in kids.items() if state != "Z")
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    pending, deadline = set(kids), time.monotonic() + grace_s
    while pending:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    pending.discard(pid)
            except ChildProcessError:  # its Popen waited for it meanwhile
                pending.discard(pid)
        if pending and time.monotonic() > deadline:
            for pid in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in pending:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    return running


def run(args: argparse.Namespace, stop: StopSignals) -> dict[str, Any]:
    """Everything between starting chronyd and reaping the last daemon; returns the figures.

    Each thing started goes on ``started`` as soon as it exists, so an interrupt at any moment
    (chronyd coming up, daemons half spawned, measuring) unwinds exactly what was started,
    last first: cap lifted, every daemon SIGTERMed at once (they save state in parallel) and
    reaped by PID, chronyd killed, their directories removed. The ``finally`` marks the
    unwinding as begun before any of it runs, so no later signal cuts it short."""
    began = time.monotonic()
    harness_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {"hosts": args.hosts, "measure_s": args.duration,
                           "poll_s": args.poll, "stagger_s": args.stagger,
                           "load_before": load()}
    with contextlib.ExitStack() as started:
        try:
            ref = started.enter_context(chronyd_server())
            # our directory, removed after Rig.close: a Rig removes its own only once built,
            # and an interrupt while it compiles the clock shim left that behind
            work = Path(tempfile.mkdtemp(prefix="ct-rig-"))
            started.callback(shutil.rmtree, work, ignore_errors=True)
            rig = started.enter_context(Rig(work))
            fleet = Fleet(rig, ref.server, args.hosts, seed=args.seed,
                          measure_s=args.duration, poll_s=args.poll)
            started.callback(fleet.close)  # before Rig.close, which kills them one by one
            starver: CpuStarver | None = None
            out["starve"] = {"percent": args.starve, "for_s": args.starve_s} if args.starve \
                else None
            if args.starve:
                starver = CpuStarver(args.starve)
                # unwound before fleet.close: a capped daemon would take long to save and exit
                started.callback(starver.close)
                lift = threading.Timer(args.starve_s, starver.release)
                started.callback(lift.cancel)
                lift.start()
            fleet.start(stagger_s=args.stagger, starver=starver)
            pids = " ".join(str(h.pid) for h in fleet.hosts)
            print(f"chronyd pid {ref.proc.pid}; daemon pids {pids}", flush=True)
            up_s = time.monotonic() - began
            sync = [h.to_sync_s or 0.0 for h in fleet.hosts]
            print(f"{args.hosts} daemons ({args.stagger:g} s apart) up and synchronized "
                  f"{up_s:.1f} s after start "
                  f"(per daemon: median {sorted(sync)[len(sync) // 2]:.1f} s, max "
                  f"{max(sync):.1f} s); measuring {args.duration:.0f} s", flush=True)
            cpu_at_sync = {h.name: cpu_seconds(h.pid) for h in fleet.hosts}
            t_sync = time.monotonic()
            scrapes = fleet.measure(every_s=args.every)
            scrapes.append(fleet.scrape_all())
            measured = time.monotonic() - t_sync
            rows = host_rows(fleet.hosts, args.settle)
            steady = sum(cpu_seconds(h.pid) - cpu_at_sync[h.name] for h in fleet.hosts)
            out |= figures(fleet.hosts, rows, scrapes, args.settle)
            out["cpu"] = {"daemons_total_s": sum(r["cpu_s"] for r in rows),
                          "daemons_measuring_s": steady,
                          "per_daemon_core_share": steady / measured / args.hosts,
                          "chronyd_s": cpu_seconds(ref.proc.pid)}
            out["order"] = order_stamps(fleet.stamps).as_json()
            if args.mcp_rounds:
                import anyio

                _, mcp, same = anyio.run(mcp_stamp_and_order,
                                         [h.daemon for h in fleet.hosts[:3]],
                                         args.mcp_rounds, fleet.stamps)
                out["mcp_order"] = mcp.as_json() | {"tool_equals_function": same}
            out["host_rows"] = rows
            if args.plot:
                plot(rows, args.plot, args.settle)
                out["plot"] = str(args.plot)
        finally:
            stop.reaping = True
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu"]["harness_s"] = (usage.ru_utime + usage.ru_stime - harness_cpu0.ru_utime
                               - harness_cpu0.ru_stime)
    out["wall_s"] = time.monotonic() - began
    out["load_after"] = load()
    return out


def figures(hosts: list[Host], rows: list[dict[str, Any]], scrapes: list[ScrapeCheck],
            settle_s: float) -> dict[str, Any]:
    total = fleet_score(hosts)
    worst = worst_host(hosts)
    rss = sorted(r["rss_bytes"] for r in rows)
    calm = fleet_score(hosts, settle_s)
    calm_worst = max(hosts, key=lambda h: settled(h, settle_s).p99_s)
    return {
        "settled": {"after_s": settle_s, "queries": calm.queries, "coverage": calm.coverage,
                    "mae_s": calm.mae_s, "p99_s": calm.p99_s,
                    "half_width_s": calm.half_width_s, "worst_host": calm_worst.name,
                    "worst_p99_s": settled(calm_worst, settle_s).p99_s},
        "queries": total.queries, "coverage": total.coverage, "mae_s": total.mae_s,
        "p99_s": total.p99_s, "half_width_s": total.half_width_s, "window_s": total.window_s,
        "misses": len(total.misses),
        "worst_host": {"host": worst.name, "clock": worst.osc.describe(),
                       "coverage": worst.score.coverage, "mae_s": worst.score.mae_s,
                       "p99_s": worst.score.p99_s, "half_width_s": worst.score.half_width_s},
        "rss_bytes": {"median": rss[len(rss) // 2], "max": rss[-1], "min": rss[0],
                      "total": sum(rss)},
        "scrapes": [s.as_json() for s in scrapes],
    }


def scrape_ok(s: dict[str, Any]) -> bool:
    n = s["hosts"]
    return (s["requests_agree"] == n and s["rss_agree"] == n
            and s["synchronized_metric"] == s["synchronized_now"])


def report(out: dict[str, Any]) -> bool:
    """Print the figures; True when every goal is met."""
    mib = 1 << 20
    w, rss, cpu, order = out["worst_host"], out["rss_bytes"], out["cpu"], out["order"]
    scr = out["scrapes"]
    contained = sum(s["contained"] for s in scr)
    scraped = sum(s["hosts"] for s in scr)
    print(f"fleet: {out['hosts']} daemons, {out['queries']} queries over "
          f"{out['measure_s']:.0f} s: coverage {out['coverage']:.4f} ({out['misses']} misses), "
          f"MAE {out['mae_s'] * 1e6:.1f} µs, p99 {out['p99_s'] * 1e6:.1f} µs, median "
          f"half-width {out['half_width_s'] * 1e6:.1f} µs, query window "
          f"{out['window_s'] * 1e6:.0f} µs")
    c = out["settled"]
    print(f"from {c['after_s']:.0f} s into measuring on: {c['queries']} queries, coverage "
          f"{c['coverage']:.4f}, MAE {c['mae_s'] * 1e6:.1f} µs, p99 {c['p99_s'] * 1e6:.1f} µs, "
          f"median half-width {c['half_width_s'] * 1e6:.1f} µs; worst host {c['worst_host']} "
          f"(p99 {c['worst_p99_s'] * 1e6:.1f} µs)")
    print(f"worst host: {w['host']} ({w['clock']}): p99 {w['p99_s'] * 1e6:.1f} µs, MAE "
          f"{w['mae_s'] * 1e6:.1f} µs, coverage {w['coverage']:.4f}, half-width "
          f"{w['half_width_s'] * 1e6:.1f} µs")
    print(f"RSS per daemon: median {rss['median'] / mib:.1f} MiB, min {rss['min'] / mib:.1f}, "
          f"max {rss['max'] / mib:.1f}; all daemons {rss['total'] / mib:.0f} MiB")
    print(f"CPU: daemons {cpu['daemons_total_s']:.1f} s in all ({cpu['daemons_measuring_s']:.1f}"
          f" s while measuring = {cpu['per_daemon_core_share'] * 100:.2f} % of a core per "
          f"daemon), chronyd {cpu['chronyd_s']:.2f} s, harness {cpu['harness_s']:.1f} s")
    print(f"metrics: {len(scr)} scrapes of every host, {scraped} in all: served offset ± bound "
          f"contained the true offset in {contained}; requests_total{{op=now}} agreed in "
          f"{sum(s['requests_agree'] for s in scr)}, RSS in {sum(s['rss_agree'] for s in scr)}"
          f", synchronized per metrics/now {scr[-1]['synchronized_metric']}/"
          f"{scr[-1]['synchronized_now']} at the last scrape")
    print(f"order_events (MCP server's function): {order['pairs']} pairs in "
          f"{order['batches']} calls, {order['decided']} ordered, {order['concurrent']} "
          f"concurrent, {order['violations']} violations ({order['violations_with_a_miss']} "
          f"involving an answer that missed truth); pairs < 1 ms apart "
          f"{order['close_pairs']}, ordered {order['close_decided']}")
    ok = (out["coverage"] >= 0.99 and order["violations"] == 0
          and all(scrape_ok(s) for s in scr))
    if "mcp_order" in out:
        m = out["mcp_order"]
        print(f"order_events (real MCP client, get_time stamps on 3 hosts): {m['pairs']} pairs,"
              f" {m['decided']} ordered, {m['concurrent']} concurrent, {m['violations']} "
              f"violations; tool == function on a bulk batch: {m['tool_equals_function']}")
        ok &= m["violations"] == 0 and m["tool_equals_function"]
    if out.get("starve"):
        print(f"daemons capped together at {out['starve']['percent']:g} % of a core for the "
              f"first {out['starve']['for_s']:g} s (cgroup cpu quota)")
    print(f"wall {out['wall_s']:.0f} s; load average before {out['load_before']}, after "
          f"{out['load_after']}")
    return ok


def plot(rows: list[dict[str, Any]], path: Path, settle_s: float) -> None:
    """Top: four hosts (steady, wandering, stepped, slewed): served error and ± bound over
    time (symmetric log scale). Bottom: every host's p99 |error| (all answers and from
    ``settle_s`` on) and median bound half-width; hosts with a miss are labelled in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def pick(pred: Any) -> dict[str, Any] | None:
        return next((r for r in rows if pred(r["osc"])), None)

    shown = [r for r in (pick(lambda o: not o["event"] and not o["wander_ppm"]),
                         pick(lambda o: not o["event"] and o["wander_ppm"]),
                         pick(lambda o: o["event"] == "step" and abs(o["step_s"]) > 1)
                         or pick(lambda o: o["event"] == "step"),
                         pick(lambda o: o["event"] == "slew")) if r is not None]
    fig = plt.figure(figsize=(13, 8), layout="constrained")
    grid = fig.add_gridspec(2, max(1, len(shown)))
    for i, r in enumerate(shown):
        ax = fig.add_subplot(grid[0, i])
        t = [p[0] for p in r["series"]]
        err = [p[1] * 1e6 for p in r["series"]]
        bnd = [p[2] * 1e6 for p in r["series"]]
        ax.fill_between(t, [-b for b in bnd], bnd, color="tab:blue", alpha=0.25, lw=0,
                        label="± bound", step="post")
        ax.plot(t, err, ".", ms=2, color="tab:red", label="served − true")
        ax.set_yscale("symlog", linthresh=100)
        if r["osc"]["event"]:
            ax.axvline(r["osc"]["event_at_s"], color="grey", ls="--", lw=0.8)
        ax.set_title(f"{r['host']}: {r['clock']}".replace(", ", ",\n", 1), fontsize=7)
        ax.set_xlabel("s into measuring")
        if i == 0:
            ax.set_ylabel("µs (linear within ±100)")
            ax.legend(fontsize=7, loc="lower right")
    ax = fig.add_subplot(grid[1, :])
    x = list(range(len(rows)))
    for off, vals, label in (
            (-0.27, [r["p99_s"] for r in rows], "p99 |served − true|, all answers"),
            (0.0, [r["settled_p99_s"] for r in rows],
             f"p99 |served − true| from {settle_s:g} s on"),
            (0.27, [r["half_width_s"] for r in rows], "median bound half-width")):
        ax.bar([i + off for i in x], [v * 1e6 for v in vals], width=0.27, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, [r["host"] for r in rows], rotation=90, fontsize=7)
    for tick, r in zip(ax.get_xticklabels(), rows, strict=True):
        if r["coverage"] < 1.0:
            tick.set_color("red")
    ax.set_ylabel("µs")
    missed = sum(r["coverage"] < 1.0 for r in rows)
    ax.set_title(f"{len(rows)} daemons against one loopback chronyd; {missed} hosts with a "
                 f"miss (red); lowest per-host coverage "
                 f"{min(r['coverage'] for r in rows):.4f}", fontsize=9)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        if not args.plot:
            raise SystemExit("--replot needs --plot PATH")
        saved = json.loads(args.replot.read_text())
        plot(saved["host_rows"], args.plot, saved["settled"]["after_s"])
        return 0
    stop = StopSignals()
    out: dict[str, Any] | None = None
    try:
        stop.install()
        print(f"load average {load()}; {os.cpu_count()} CPUs", flush=True)
        out = run(args, stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.reaping = True
        stray = reap_children()
        stop.ignore()
        if stray:
            print(f"killed by PID after the clean-up: {stray}", file=sys.stderr)
    if out is None or stop.received is not None:
        print("interrupted: every daemon and chronyd was stopped", file=sys.stderr)
        return 130
    ok = report(out)
    if args.json:
        dump(args.json, out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
