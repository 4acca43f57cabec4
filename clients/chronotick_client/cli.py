"""chronotick-cli: ask the daemon for the time, its status and its sources."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from chronotick_client.client import Client, DaemonUnavailable, RequestFailed
from chronotick_client.protocol import default_socket_path
from chronotick_client.shm import ShmReader, ShmUnavailable


def iso_ns(ns: int) -> str:
    """ISO 8601 UTC with all nine fractional digits."""
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def fmt_s(ns: int | None) -> str:
    """A duration in the unit a person reads most easily."""
    if ns is None:
        return "-"
    a = abs(ns)
    if a < 1_000:
        return f"{ns} ns"
    if a < 1_000_000:
        return f"{ns / 1e3:.3f} µs"
    if a < 1_000_000_000:
        return f"{ns / 1e6:.3f} ms"
    return f"{ns / 1e9:.3f} s"


def render_now(r: dict[str, Any]) -> str:
    age = fmt_s(r.get("age_ns")) if r.get("age_ns") is not None else "never measured"
    return "\n".join([
        f"{iso_ns(r['corrected_time_ns'])}  ± {fmt_s(r['bound_ns'])}  ({r['status']}, "
        f"source {r['source']})",
        f"  earliest  {iso_ns(r['earliest_ns'])}",
        f"  latest    {iso_ns(r['latest_ns'])}",
        f"  offset    {fmt_s(r['offset_ns'])} (reference − system)",
        f"  age       {age}",
    ])


def render_status(r: dict[str, Any]) -> str:
    bound = fmt_s(r.get("bound_ns"))
    lines = [f"status     {r.get('status')} via {r.get('source')}  (bound {bound})"]
    for key in ("version", "pid", "uptime_s", "warmup_progress", "socket", "config",
                "measurements", "steps", "outliers", "connections", "requests"):
        if key in r:
            lines.append(f"{key:<10} {r[key]}")
    for name, model in (r.get("models") or {}).items():
        lines.append(f"model      {name}: {model}")
    return "\n".join(lines)


def fmt_ppm(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f} ppm"


def render_tracking(r: dict[str, Any]) -> str:
    """``chronyc tracking``'s layout, one labelled line per field."""
    freq = r.get("frequency_ppm")
    sense = "" if freq is None else (" slow" if freq > 0 else " fast" if freq < 0 else "")
    ref = r.get("reference") or "-"
    if r.get("stratum") is not None:
        ref += f" (stratum {r['stratum']})"
    last = r.get("last_update_ns")
    rows = [
        ("Reference", ref),
        ("Status", f"{r.get('status')} via {r.get('source')}"
                   + (" (restored estimate)" if r.get("restored") else "")),
        ("Offset", f"{fmt_s(r.get('offset_ns'))} (reference − system, now)"),
        ("Last offset", fmt_s(r.get("last_offset_ns"))),
        ("Bound", f"± {fmt_s(r.get('bound_ns'))}"),
        ("Frequency", f"{fmt_ppm(freq)}{sense} ({r.get('time_axis', 'realtime')} clock "
                      "vs reference)"),
        ("Freq error", f"± {fmt_ppm(r.get('frequency_error_ppm')).lstrip('+')}"
                       if r.get("frequency_error_ppm") is not None else "-"),
        ("Residual", fmt_s(r.get("residual_ns"))),
        ("Samples", str(r.get("samples", "-"))),
        ("Root delay", fmt_s(r.get("root_delay_ns"))),
        ("Root dispersion", fmt_s(r.get("root_dispersion_ns"))),
        ("Leap status", str(r.get("leap", "unknown"))),
        ("Last update", f"{iso_ns(last)} ({fmt_s(r.get('age_ns'))} ago)" if last else "never"),
        ("Poll interval", f"{r['poll_interval_s']:g} s"
                          if r.get("poll_interval_s") is not None else "-"),
    ]
    return "\n".join(f"{k:<16}: {v}" for k, v in rows)


def render_sources(r: dict[str, Any]) -> str:
    rows = r.get("sources", [])
    w = max([28, *(len(str(s.get("name", ""))) for s in rows)])  # PTP names are socket paths
    head = f"{'':2}{'name':<{w}} {'kind':<5} {'state':<12} {'offset':>12} {'delay':>12} " \
           f"{'age':>12} {'bound':>12}  reason"
    lines = [head]
    for s in rows:
        mark = "*" if s.get("selected") else " "
        # an NTS source reads `nts` once authenticated, `nts?` while it is not
        kind = ("nts" if s.get("authenticated") else "nts?") if s.get("nts") else s.get("kind")
        lines.append(
            f"{mark:2}{s.get('name', ''):<{w}} {kind or '':<5} {s.get('state', '-'):<12} "
            f"{fmt_s(s.get('last_offset_ns')):>12} {fmt_s(s.get('last_delay_ns')):>12} "
            f"{fmt_s(s.get('age_ns')):>12} {fmt_s(s.get('bound_ns')):>12}  "
            f"{s.get('reason') or s.get('engine_state') or ''}")
    lines.append(f"selected: {r.get('selected')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chronotick-cli",
                                description="Query chronotickd for corrected time")
    p.add_argument("--socket", default=None,
                   help=f"daemon socket (default: $CHRONOTICK_SOCKET or {default_socket_path()})")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the daemon")
    # the same options after the command (`chronotick-cli now --json`); SUPPRESS keeps a
    # value given before the command from being overwritten by the subparser's default
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    # `now` and `watch` read the shared-memory segment when it is usable, else the socket
    shm = argparse.ArgumentParser(add_help=False)
    way = shm.add_mutually_exclusive_group()
    way.add_argument("--shm", action="store_true",
                     help="read only the shared-memory segment (error if it cannot answer)")
    way.add_argument("--no-shm", action="store_true", help="always ask the socket")
    shm.add_argument("--shm-path", default=None,
                     help="segment path (default: $CHRONOTICK_SHM or shm0 beside the socket)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("now", parents=[common, shm], help="corrected time with its bound")
    sub.add_parser("status", parents=[common], help="daemon health")
    sub.add_parser("sources", parents=[common], help="time sources and which one is selected")
    sub.add_parser("tracking", parents=[common],
                   help="the estimate in chronyc tracking's terms (frequency, leap, ...)")
    f = sub.add_parser("future", parents=[common], help="bound projected SECONDS ahead")
    f.add_argument("seconds", type=float)
    a = sub.add_parser("at", parents=[common],
                       help="retrospective estimate for a past system time (ns)")
    a.add_argument("system_time_ns", type=int)
    w = sub.add_parser("watch", parents=[common, shm], help="print `now` repeatedly")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--count", type=int, default=0, help="stop after N lines (0: forever)")
    return p


def shm_only(path: str) -> Any:
    """``now`` from the segment alone (``--shm``); explains itself when it cannot answer."""
    reader: ShmReader | None = None

    def now() -> dict[str, Any]:
        nonlocal reader
        try:
            reader = reader or ShmReader(path)
            return reader.now()
        except ShmUnavailable as exc:
            raise DaemonUnavailable(path, f"{exc} (drop --shm to ask the socket)") from None

    return now


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.socket, timeout=args.timeout, shm_path=getattr(args, "shm_path", None),
                    use_shm=not getattr(args, "no_shm", False))
    now = shm_only(client.shm_path) if getattr(args, "shm", False) else client.now
    out = print
    try:
        if args.command == "watch":
            n = 0
            while True:
                r = now()
                out(json.dumps(r) if args.json else
                    f"{iso_ns(r['corrected_time_ns'])} ± {fmt_s(r['bound_ns'])} {r['status']}")
                sys.stdout.flush()
                n += 1
                if args.count and n >= args.count:
                    return 0
                time.sleep(args.interval)
        if args.command == "now":
            r, render = now(), render_now
        elif args.command == "status":
            r, render = client.status(), render_status
        elif args.command == "sources":
            r, render = client.sources(), render_sources
        elif args.command == "tracking":
            r, render = client.tracking(), render_tracking
        elif args.command == "future":
            r, render = client.future(args.seconds), render_now
        else:
            r, render = client.at(args.system_time_ns), render_now
        out(json.dumps(r, indent=None if args.json else 2) if args.json else render(r))
        return 0
    except DaemonUnavailable as exc:
        print(f"chronotick-cli: {exc}", file=sys.stderr)
        return 3
    except RequestFailed as exc:
        print(f"chronotick-cli: the daemon refused the request: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
