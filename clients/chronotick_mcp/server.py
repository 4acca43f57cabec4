"""chronotick-mcp: a thin stdio MCP server that answers AI agents from chronotickd.

It holds no model and no clock logic: every time answer is one request on the daemon's Unix
socket (``chronotick_client.Client``). Imports stay light (no numpy, no torch) so an agent's
MCP client can spawn it quickly.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any

try:
    from mcp.server.mcpserver import MCPServer
except ImportError as exc:  # the SDK is an extra: say which one
    raise SystemExit(f"chronotick-mcp needs the MCP Python SDK 2.x ({exc}); install it with "
                     "`pip install 'chronotick[mcp]'` or `pip install 'mcp>=2,<3'`") from None
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field, ValidationError

from chronotick_client.client import Client
from chronotick_client.protocol import default_socket_path
from chronotick_mcp import tools
from chronotick_mcp.models import (
    CorrectedTimestamp,
    CurrentTime,
    DaemonStatus,
    EventOrder,
    Events,
    FutureSeconds,
    FutureTimeResult,
    SystemTimeNs,
    TimeConversion,
    TimeResult,
    WallTime,
    ZoneName,
)

INSTRUCTIONS = """\
ChronoTick serves corrected time with an error bound: the true time lies in
[earliest, latest]. Always check `status`: only "synchronized" is backed by fresh
measurements; "freerunning" is an extrapolation with a growing bound; "unsynchronized" is
a best guess (the system clock, or an old estimate held over) with a wide bound. To order
events across hosts, record get_time's earliest_ns/latest_ns at each event and use
order_events: A happened before B only if A.latest < B.earliest.
get_current_time and convert_time work like the reference MCP time server (IANA zone names)
and add earliest/latest in the zone and whether the date is certain."""


def _annotations(title: str) -> ToolAnnotations:
    """Every tool only reads (no effect on the host or the daemon): safe to call at any time
    without confirmation. Closed world: the only thing reached is the local daemon."""
    return ToolAnnotations(title=title, read_only_hint=True, destructive_hint=False,
                           idempotent_hint=True, open_world_hint=False)


def _describe(errors: list[Any], limit: int = 5) -> str:
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
        got = repr(err.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        parts.append(f"{loc}: {err.get('msg')} (got {got})")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


class ChronoTickServer(MCPServer):
    """MCPServer whose argument errors are JSON-RPC invalid-params errors (-32602).

    The SDK reports arguments that fail the input schema as a tool result with isError (spec
    2025-11-25, SEP-1303: so a model can read it and retry); spec 2025-06-18 and this project's
    issue want a protocol error. ``argument_errors`` picks: "protocol" (default) or "result".
    Unknown tools are protocol errors either way; failures of the daemon are always tool
    results with isError, so the agent reads them.
    """

    def __init__(self, *args: Any, argument_errors: str = "protocol", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool_names: set[str] = set()
        self.argument_errors = argument_errors

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None
                        ) -> CallToolResult | InputRequiredResult:
        if name not in self.tool_names:
            raise MCPError(INVALID_PARAMS, f"unknown tool {name!r}; this server has "
                                           f"{', '.join(sorted(self.tool_names))}")
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if (self.argument_errors == "protocol" and isinstance(cause, ValidationError)
                    and not isinstance(exc, UnexpectedToolError)):
                errors = cause.errors(include_url=False)
                raise MCPError(
                    INVALID_PARAMS, f"invalid arguments for {name}: {_describe(errors)}",
                    data={"tool": name,
                          "errors": [{"loc": [str(p) for p in e.get("loc", ())],
                                      "msg": e.get("msg")} for e in errors[:20]]},
                ) from None
            raise


def build_server(client: Client, log_level: str = "WARNING",
                 argument_errors: str = "protocol") -> ChronoTickServer:
    """The MCP server with its seven tools, bound to one daemon client."""
    daemon = tools.DaemonGateway(client)
    server = ChronoTickServer("chronotick", title="ChronoTick", version=_version(),
                              instructions=INSTRUCTIONS, log_level=log_level,  # type: ignore[arg-type]
                              argument_errors=argument_errors)

    def register(name: str, title: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            # one paragraph, without the source's indentation, is what a model reads
            text = " ".join(inspect.cleandoc(fn.__doc__ or "").split())
            server.add_tool(fn, name=name, title=title, description=text,
                            annotations=_annotations(title), structured_output=True)
            server.tool_names.add(name)
            return fn

        return add

    @register("get_time", "Corrected time with error bound")
    def get_time() -> TimeResult:
        """Current time from chronotickd: corrected time (ISO 8601 UTC with nanoseconds and
        integer ns), the interval [earliest, latest] the true time lies in, its half-width
        bound, status (synchronized / freerunning / unsynchronized), source, the age of the
        newest measurement and a one-line summary. Use earliest/latest, not only the
        midpoint, when ordering or comparing times."""
        return tools.time_result(daemon.call(client.now))

    @register("get_daemon_status", "Time daemon health")
    def get_daemon_status() -> DaemonStatus:
        """Health of chronotickd: ok / warming_up / degraded / unsynchronized, warm-up
        progress, every time source with its state and which one is selected, forecast
        models, uptime and the last synchronization."""
        return tools.daemon_status(daemon.call(client.status), daemon.call(client.sources))

    @register("get_time_with_future_uncertainty", "Time and bound projected ahead")
    def get_time_with_future_uncertainty(future_seconds: FutureSeconds) -> FutureTimeResult:
        """The corrected time and error bound for now + future_seconds (0 < x ≤ 3600) as
        they can be promised now, i.e. assuming no new measurement arrives: how much the
        uncertainty grows over that horizon (deadlines, lease expiry, scheduling)."""
        return tools.future_result(daemon.call(client.future, future_seconds), future_seconds)

    @register("order_events", "Order events by time intervals")
    def order_events(events: Events) -> EventOrder:
        """Order events known by time intervals, e.g. get_time's earliest_ns/latest_ns
        recorded on different hosts. For each pair: 'before', 'after' or 'concurrent', by
        the rule A happened before B only if A.latest_ns < B.earliest_ns; overlapping
        intervals are concurrent (no clock can tell). Pure computation, no daemon needed."""
        return tools.order_events(events)

    @register("correct_timestamp", "Correct a past system timestamp")
    def correct_timestamp(system_time_ns: SystemTimeNs) -> CorrectedTimestamp:
        """Retrospective best estimate and bound for a past system-clock reading (integer ns
        since the epoch, e.g. a log line's time.time_ns()), using measurements on both sides
        of it: what the true time was when the system clock read system_time_ns."""
        return tools.corrected_timestamp(daemon.call(client.at, system_time_ns), system_time_ns)

    # The official MCP time server's two tools (same names, arguments and result fields:
    # modelcontextprotocol/servers src/time), answered from the corrected clock.
    @register("get_current_time", "Current time in a time zone, with error bound")
    def get_current_time(timezone: Annotated[ZoneName, Field(
            description="IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use "
                        "'UTC' if no timezone is given by the user.")]) -> CurrentTime:
        """Get current time in a specific timezone, from chronotickd's corrected clock: local
        date and time, day of week and DST as the reference MCP time server gives them, plus
        earliest/latest (the interval the true time lies in, in that zone), bound, status and
        whether the date is certain. A name that is not an IANA zone is an error."""
        tools.check_zone(timezone)  # a bad name is an error even with the daemon down
        return tools.current_time(daemon.call(client.now), timezone)

    @register("convert_time", "Convert a time between time zones")
    def convert_time(
        source_timezone: Annotated[ZoneName, Field(
            description="Source IANA timezone name (e.g., 'America/New_York', "
                        "'Europe/London'). Use 'UTC' if no source timezone is given.")],
        time: WallTime,
        target_timezone: Annotated[ZoneName, Field(
            description="Target IANA timezone name (e.g., 'Asia/Tokyo', "
                        "'America/Los_Angeles'). Use 'UTC' if no target timezone is given.")],
    ) -> TimeConversion:
        """Convert time between timezones: HH:MM (24-hour) today in the source zone, 'today'
        taken from chronotickd's corrected clock, shown in the target zone with the UTC
        offset difference (the reference MCP time server's result fields), plus the
        reference time, its bound and whether today's date is certain."""
        tools.check_zone(source_timezone), tools.check_zone(target_timezone)
        tools.check_hhmm(time)
        return tools.convert_time(daemon.call(client.now), source_timezone, time,
                                  target_timezone)

    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chronotick")
    except Exception:  # not installed (a checkout on PYTHONPATH)
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chronotick-mcp",
        description="MCP server (stdio) giving AI agents corrected time with an error bound "
                    "from chronotickd.")
    p.add_argument("--socket", default=None,
                   help=f"daemon socket (default: $CHRONOTICK_SOCKET or {default_socket_path()})")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for the daemon per request (default 2)")
    p.add_argument("--argument-errors", choices=["protocol", "result"], default="protocol",
                   help="report arguments that fail the input schema as a JSON-RPC "
                        "invalid-params error (protocol, default; spec 2025-06-18) or as a tool "
                        "result with isError that the model reads (result; spec 2025-11-25)")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="stderr log level (stdout carries the MCP protocol)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout <= 0:
        print("chronotick-mcp: --timeout must be > 0", file=sys.stderr)
        return 2
    # One plain line per event on stderr (stdout is the protocol); set up before the SDK,
    # whose own setup would otherwise install a wrapped, multi-line rich handler.
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="chronotick-mcp: %(levelname)s %(message)s")
    client = Client(args.socket, timeout=args.timeout, use_shm=True)  # shm when usable
    try:
        build_server(client, log_level=args.log_level,
                     argument_errors=args.argument_errors).run("stdio")
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 0
