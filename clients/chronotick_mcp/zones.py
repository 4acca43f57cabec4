"""Time-zone arithmetic for the official MCP time server's two tools, with the bound kept.

``get_current_time(timezone)`` and ``convert_time(source_timezone, time, target_timezone)``
have the names, arguments and result fields of the reference ``mcp-server-time``
(modelcontextprotocol/servers, src/time), so an agent written against it works unchanged.
What ChronoTick adds: the time comes from chronotickd's corrected clock, and the interval
[earliest, latest] that holds the true time is carried into the zone, so the agent can see
when "today" or "what hour is it" is not certain. Zones are IANA names through ``zoneinfo``.
Pure functions on integer nanoseconds: no clock is read here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NS = 1_000_000_000


class ZoneInputError(ValueError):
    """A zone name or a time the tools cannot use; the message says what would work."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; anything else (unknown, a directory, a path) is a clear error.

    zoneinfo raises a different exception per kind of bad key, and some messages carry a file
    path, so none of them is passed on.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ZoneInputError(f"invalid timezone {name!r}: not a known IANA time zone name "
                             "(e.g. 'Europe/Paris', 'America/New_York', 'UTC')") from None


def local_iso(ns: int, tz: ZoneInfo) -> str:
    """ISO 8601 in ``tz`` with all nine fractional digits and the zone's UTC offset."""
    secs, frac = divmod(ns, NS)
    text = datetime.fromtimestamp(secs, tz).isoformat()  # YYYY-MM-DDTHH:MM:SS+HH:MM
    return f"{text[:19]}.{frac:09d}{text[19:]}"


def wall(ns: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ns // NS, tz)


def describe(ns: int, tz: ZoneInfo, name: str) -> dict[str, object]:
    """The official server's ``TimeResult`` fields for the instant ``ns`` in ``tz``."""
    dt = wall(ns, tz)
    return {"timezone": name, "datetime": dt.isoformat(timespec="seconds"),
            "day_of_week": dt.strftime("%A"), "is_dst": bool(dt.dst())}


def parse_hhmm(text: str) -> tuple[int, int]:
    try:
        t = datetime.strptime(text, "%H:%M").time()
    except (ValueError, TypeError):
        raise ZoneInputError(f"invalid time {text!r}: expected HH:MM, 24-hour (e.g. '16:30')"
                             ) from None
    return t.hour, t.minute


def at_wall_time(today_ns: int, tz: ZoneInfo, tz_name: str, hour: int, minute: int) -> datetime:
    """``hour:minute`` on the date ``today_ns`` has in ``tz``; a time skipped by a clock
    change (02:30 on a spring-forward day) is an error, as in the reference server."""
    day = wall(today_ns, tz)
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
    back = datetime.fromtimestamp(local.timestamp(), tz)
    if back.replace(tzinfo=None) != local.replace(tzinfo=None):
        raise ZoneInputError(f"invalid time: {hour:02d}:{minute:02d} does not exist in "
                             f"{tz_name} on {local.date().isoformat()} (skipped by a clock "
                             "change)")
    return local


def time_difference(source: datetime, target: datetime) -> str:
    """Target's UTC offset minus source's, formatted like the reference server ('+7.0h')."""
    hours = ((target.utcoffset() or timedelta()) - (source.utcoffset() or timedelta())
             ).total_seconds() / 3600
    if hours.is_integer():
        return f"{hours:+.1f}h"
    return f"{hours:+.2f}".rstrip("0").rstrip(".") + "h"
