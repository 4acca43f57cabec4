"""The tools' bodies: ask the daemon, reshape its wire result for an agent.

No clock logic lives here (the daemon owns it); only formatting, the pure ordering rule, and
the translation of client failures into MCP errors an agent can act on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import ValidationError

from chronotick_client.cli import fmt_s, iso_ns
from chronotick_client.client import Client, DaemonUnavailable, RequestFailed
from chronotick_client.protocol import E_BAD_REQUEST, ProtocolError
from chronotick_mcp import ordering, zones
from chronotick_mcp.models import (
    CorrectedTimestamp,
    CurrentTime,
    DaemonStatus,
    Event,
    EventOrder,
    FutureTimeResult,
    PairOrder,
    SourceInfo,
    TimeConversion,
    TimeResult,
    ZoneTime,
)

log = logging.getLogger("chronotick_mcp")


class DaemonGateway:
    """The adapter's one connection to chronotickd, with errors turned into MCP terms.

    ``Client`` reconnects on the next call after any failure, so a daemon restart costs the
    agent at most one error result. Calls run on the SDK's worker threads; ``Client`` is
    thread-safe.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._down = False

    @property
    def socket_path(self) -> str:
        return self.client.path

    def call(self, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        try:
            result = fn(*args)
        except DaemonUnavailable as exc:
            if not self._down:
                log.warning("%s", exc)
                self._down = True
            raise ToolError(str(exc)) from None
        except RequestFailed as exc:
            if exc.code == E_BAD_REQUEST:
                raise MCPError(INVALID_PARAMS,
                               f"the daemon rejected the arguments: {exc}") from None
            raise ToolError(f"chronotickd at {self.socket_path} answered with an error: {exc}; "
                            "see its log") from None
        except ProtocolError as exc:
            raise ToolError(f"chronotickd at {self.socket_path} speaks another protocol "
                            f"({exc}); upgrade chronotick-mcp and chronotickd together") from None
        if self._down:
            log.warning("chronotickd at %s reachable again", self.socket_path)
            self._down = False
        return result


# -- shaping daemon answers ---------------------------------------------------------------
def _time_fields(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "corrected_time": iso_ns(r["corrected_time_ns"]),
        "corrected_time_ns": r["corrected_time_ns"],
        "system_time_ns": r["system_time_ns"],
        "offset_ns": r["offset_ns"],
        "earliest": iso_ns(r["earliest_ns"]),
        "latest": iso_ns(r["latest_ns"]),
        "earliest_ns": r["earliest_ns"],
        "latest_ns": r["latest_ns"],
        "bound_ns": r["bound_ns"],
        "status": r["status"],
        "source": r["source"],
        "age_ns": r.get("age_ns"),
    }


def _trust(r: dict[str, Any]) -> str:
    """The part of a summary that says how far to trust the answer."""
    age = r.get("age_ns")
    ago = f"last measurement {fmt_s(age)} ago" if age is not None else "never measured"
    if r["status"] == "unsynchronized":
        if r["source"] == "system" or age is None:
            return "unsynchronized: no usable measurement, system clock with a wide bound"
        void = r.get("void_after_ns") or 0
        # past its void the estimate is held over; before it, still collecting first samples
        how = "held over" if 0 < void < r["system_time_ns"] else "from its first measurements"
        return f"unsynchronized: {r['source']} estimate {how}, {ago}, with a wide bound"
    return f"{r['status']} via {r['source']}, {ago}"


def time_result(r: dict[str, Any]) -> TimeResult:
    f = _time_fields(r)
    return TimeResult(**f, summary=f"{f['corrected_time']} ± {fmt_s(r['bound_ns'])} ({_trust(r)})")


def future_result(r: dict[str, Any], seconds: float) -> FutureTimeResult:
    f = _time_fields(r)
    return FutureTimeResult(
        **f, future_seconds=seconds,
        summary=f"in {seconds:g} s: {f['corrected_time']} ± {fmt_s(r['bound_ns'])} "
                f"if no new measurement arrives ({_trust(r)})")


def corrected_timestamp(r: dict[str, Any], system_time_ns: int) -> CorrectedTimestamp:
    f = _time_fields(r)
    return CorrectedTimestamp(
        **f, system_time=iso_ns(system_time_ns),
        summary=f"system time {iso_ns(system_time_ns)} was {f['corrected_time']} "
                f"± {fmt_s(r['bound_ns'])} ({r['status']} via {r['source']}, "
                f"correction {fmt_s(r['offset_ns'])})")


def _health(status: str, progress: float | None) -> str:
    if status == "unsynchronized":
        return "unsynchronized"
    if status != "synchronized":
        return "degraded"
    if progress is not None and progress < 1.0:
        return "warming_up"
    return "ok"


def _source(row: dict[str, Any]) -> SourceInfo:
    """One source row; a row whose known fields have unexpected types (a newer daemon) is
    passed on as text in ``reason`` rather than failing the whole status."""
    try:
        return SourceInfo.model_validate(row)
    except ValidationError:
        log.warning("source row with unexpected field types: %r", row)
        return SourceInfo(name=str(row.get("name")), reason=f"unparsed row: {row!r}"[:1000])


def daemon_status(st: dict[str, Any], src: dict[str, Any], now_ns: int | None = None
                  ) -> DaemonStatus:
    now_ns = time.time_ns() if now_ns is None else now_ns
    rows = [_source(row) for row in src.get("sources", []) if row.get("name")]
    last = st.get("last_sync_ns")
    progress = st.get("warmup_progress")
    health = _health(str(st.get("status")), progress)
    usable = sum(1 for s in rows if s.usable or (s.usable is None and s.state == "ok"))
    parts = [f"{health}: {st.get('status')} via {st.get('source')}",
             f"bound {fmt_s(st.get('bound_ns'))}"]
    if progress is not None and progress < 1.0:
        parts.append(f"warm-up {progress:.0%}")
    parts.append(f"{usable}/{len(rows)} sources usable")
    if st.get("uptime_s") is not None:
        parts.append(f"up {st['uptime_s']:.0f} s")
    parts.append(f"last sync {fmt_s(now_ns - last)} ago" if last else "never synced")
    return DaemonStatus(
        health=health,
        status=str(st.get("status")),
        source=str(st.get("source")),
        bound_ns=st.get("bound_ns"),
        warmup_progress=progress,
        uptime_s=st.get("uptime_s"),
        last_sync=iso_ns(last) if last else None,
        last_sync_ns=last,
        last_sync_age_s=round((now_ns - last) / 1e9, 6) if last else None,
        selected_source=src.get("selected"),
        sources=rows,
        models=st.get("models") or {},
        version=st.get("version"),
        protocol_version=st.get("protocol_version"),
        pid=st.get("pid"),
        socket=st.get("socket"),
        measurements=st.get("measurements"),
        steps=st.get("steps"),
        outliers=st.get("outliers"),
        summary=", ".join(parts),
    )


def order_events(events: list[Event]) -> EventOrder:
    pairs = [PairOrder(a=a, b=b, relation=rel, gap_ns=gap)
             for a, b, rel, gap in ordering.pairwise(events)]
    ordered = sum(1 for p in pairs if p.relation != "concurrent")
    concurrent = len(pairs) - ordered
    order = ordering.presentation_order(events)
    if not pairs:
        summary = "one event: nothing to order"
    elif concurrent == 0:
        summary = f"{len(events)} events, totally ordered: " + " < ".join(order)
    else:
        summary = (f"{len(events)} events, {len(pairs)} pairs: {ordered} provably ordered, "
                   f"{concurrent} concurrent (overlapping intervals)")
    return EventOrder(pairs=pairs, order=order, ordered_pairs=ordered,
                      concurrent_pairs=concurrent, summary=summary)


# -- the official time server's tools -------------------------------------------------------
def check_zone(name: str) -> Any:
    """The zone, or a tool error (isError result) an agent can read and correct."""
    try:
        return zones.zone(name)
    except zones.ZoneInputError as exc:
        raise ToolError(str(exc)) from None


def check_hhmm(text: str) -> tuple[int, int]:
    try:
        return zones.parse_hhmm(text)
    except zones.ZoneInputError as exc:
        raise ToolError(str(exc)) from None


def current_time(r: dict[str, Any], tz_name: str) -> CurrentTime:
    """``get_current_time``: the daemon's answer ``r`` (a ``now``) seen in ``tz_name``."""
    tz = check_zone(tz_name)
    lo, mid, hi = r["earliest_ns"], r["corrected_time_ns"], r["latest_ns"]
    certain = zones.wall(lo, tz).date() == zones.wall(hi, tz).date()
    here = zones.describe(mid, tz, tz_name)
    return CurrentTime(
        **here, datetime_ns=zones.local_iso(mid, tz), earliest=zones.local_iso(lo, tz),
        latest=zones.local_iso(hi, tz), corrected_time_ns=mid, earliest_ns=lo, latest_ns=hi,
        bound_ns=r["bound_ns"], status=r["status"], source=r["source"], age_ns=r.get("age_ns"),
        date_certain=certain,
        summary=f"{zones.local_iso(mid, tz)} {here['day_of_week']} in {tz_name} "
                f"± {fmt_s(r['bound_ns'])} ({_trust(r)})"
                + ("" if certain else "; the bound spans midnight: the date is uncertain"))


def convert_time(r: dict[str, Any], source_tz: str, time_text: str, target_tz: str
                 ) -> TimeConversion:
    """``convert_time``: HH:MM today in ``source_tz`` (today by ChronoTick's corrected clock,
    the answer ``r``) shown in ``target_tz``."""
    src, dst = check_zone(source_tz), check_zone(target_tz)
    hour, minute = check_hhmm(time_text)
    try:
        local = zones.at_wall_time(r["corrected_time_ns"], src, source_tz, hour, minute)
    except zones.ZoneInputError as exc:
        raise ToolError(str(exc)) from None
    target = local.astimezone(dst)
    certain = (zones.wall(r["earliest_ns"], src).date() == zones.wall(r["latest_ns"], src).date())

    def side(dt: Any, name: str) -> ZoneTime:
        return ZoneTime(timezone=name, datetime=dt.isoformat(timespec="seconds"),
                        day_of_week=dt.strftime("%A"), is_dst=bool(dt.dst()))

    diff = zones.time_difference(local, target)
    return TimeConversion(
        source=side(local, source_tz), target=side(target, target_tz), time_difference=diff,
        reference_time=iso_ns(r["corrected_time_ns"]), bound_ns=r["bound_ns"],
        status=r["status"], date_certain=certain,
        summary=f"{local.isoformat(timespec='minutes')} in {source_tz} is "
                f"{target.isoformat(timespec='minutes')} in {target_tz} ({diff})"
                + ("" if certain else "; today's date in the source zone is uncertain "
                   "(the bound spans midnight)"))
