"""Input and output shapes of the MCP tools, as pydantic models.

The SDK turns argument annotations into each tool's ``inputSchema`` and the return models into
its ``outputSchema``, validates both, and puts the result into ``structuredContent`` (plus the
same JSON as text for clients that read only text). Constraints live here so the published
schema and the checks can never disagree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

MAX_FUTURE_S = 3600.0
MAX_EVENTS = 100
MAX_NS = 2**63  # the daemon's limit for system_time_ns (signed 64-bit)


def _no_bool(value: Any) -> Any:
    """JSON ``true`` is not a number: pydantic's lax mode would read it as 1."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _id_str(value: Any) -> Any:
    """Accept integer ids as a convenience; everything else must already be a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# The validator goes after Field: placed before it, pydantic publishes the constraints as
# non-standard "gt"/"le" keys instead of exclusiveMinimum/maximum.
NOT_BOOL = BeforeValidator(_no_bool)

FutureSeconds = Annotated[
    float,
    Field(gt=0, le=MAX_FUTURE_S, allow_inf_nan=False,
          description="Seconds ahead of now, 0 < x ≤ 3600."),
    NOT_BOOL,
]

SystemTimeNs = Annotated[
    int,
    Field(gt=0, lt=MAX_NS,
          description="A system-clock (CLOCK_REALTIME) reading in integer nanoseconds since "
                      "the Unix epoch, e.g. from time.time_ns(). A decimal string is accepted "
                      "too, for callers whose JSON numbers are doubles (JavaScript)."),
    NOT_BOOL,
]

Status = Literal["synchronized", "freerunning", "unsynchronized"]


class TimeResult(BaseModel):
    """Corrected time with its error bound: earliest ≤ true time ≤ latest."""

    corrected_time: str = Field(description="Corrected time, ISO 8601 UTC with 9 fractional "
                                            "digits (exact, unlike a JSON double).")
    corrected_time_ns: int = Field(description="Corrected time, integer ns since the epoch.")
    system_time_ns: int = Field(description="The system clock reading the answer is for.")
    offset_ns: int = Field(description="reference − system, ns: corrected = system + offset.")
    earliest: str = Field(description="Earliest possible true time, ISO 8601 UTC.")
    latest: str = Field(description="Latest possible true time, ISO 8601 UTC.")
    earliest_ns: int
    latest_ns: int
    bound_ns: int = Field(description="Half-width of the interval, ns (rounded up).")
    status: str = Field(description="synchronized | freerunning | unsynchronized. Check it: "
                                    "only 'synchronized' is backed by fresh measurements.")
    source: str = Field(description="What the estimate comes from (ntp, ptp, system, ...).")
    age_ns: int | None = Field(description="Age of the newest measurement behind the answer, "
                                           "ns; null when nothing was ever measured.")
    summary: str = Field(description="One line for a person.")


class FutureTimeResult(TimeResult):
    """The answer for now + future_seconds as it can be promised now."""

    future_seconds: float = Field(description="How far ahead the answer is projected.")


class CorrectedTimestamp(TimeResult):
    """The retrospective estimate for a past system-clock reading."""

    system_time: str = Field(description="The given system time, ISO 8601 UTC.")


class SourceInfo(BaseModel):
    """One time source as the daemon reports it (sources may add fields of their own)."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str | None = None
    state: str | None = Field(None, description="The source's own state (ok, unreachable, "
                                                "falseticker, ...).")
    selected: bool | None = None
    usable: bool | None = None
    samples: int | None = None
    reason: str | None = None
    engine_state: str | None = None
    last_offset_ns: int | None = None
    last_delay_ns: int | None = None
    bound_ns: int | None = None
    last_ns: int | None = None
    age_ns: int | None = Field(None, description="Age of the source's newest sample, ns.")


class DaemonStatus(BaseModel):
    """Health of chronotickd and its sources."""

    health: Literal["ok", "warming_up", "degraded", "unsynchronized"] = Field(
        description="ok: synchronized and warmed up; warming_up: still in fast polling; "
                    "degraded: freerunning (stale or restored estimate); unsynchronized: "
                    "no fresh measurement backs the answer (the system clock, or an old "
                    "estimate held over) and its bound is wide.")
    status: str
    source: str
    bound_ns: int | None = None
    warmup_progress: float | None = Field(None, description="0..1, 1 when warm-up is over.")
    uptime_s: float | None = None
    last_sync: str | None = Field(None, description="Newest measurement in the fit, ISO 8601.")
    last_sync_ns: int | None = None
    last_sync_age_s: float | None = None
    selected_source: str | None = None
    sources: list[SourceInfo] = Field(default_factory=list)
    models: dict[str, Any] = Field(default_factory=dict,
                                   description="Forecast models and their state, by name.")
    version: str | None = None
    protocol_version: int | None = None
    pid: int | None = None
    socket: str | None = None
    measurements: int | None = None
    steps: int | None = None
    outliers: int | None = None
    summary: str


class Event(BaseModel):
    """Something that happened, known only to lie within [earliest_ns, latest_ns]."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=200), BeforeValidator(_id_str)]
    earliest_ns: Annotated[int, Field(description="earliest_ns of a get_time answer taken at "
                                                  "the event"), NOT_BOOL]
    latest_ns: Annotated[int, Field(description="latest_ns of that answer"), NOT_BOOL]

    @model_validator(mode="after")
    def _ordered(self) -> Event:
        if self.latest_ns < self.earliest_ns:
            raise ValueError(f"event {self.id!r}: latest_ns {self.latest_ns} is before "
                             f"earliest_ns {self.earliest_ns}")
        return self


def _unique_ids(events: list[Event]) -> list[Event]:
    seen: set[str] = set()
    for e in events:
        if e.id in seen:
            raise ValueError(f"event id {e.id!r} appears twice; ids must be unique")
        seen.add(e.id)
    return events


Events = Annotated[
    list[Event],
    AfterValidator(_unique_ids),
    Field(min_length=1, max_length=MAX_EVENTS,
          description="Events with time intervals, e.g. the earliest_ns/latest_ns of get_time "
                      "answers taken on different hosts. Ids must be unique."),
]


class PairOrder(BaseModel):
    a: str
    b: str
    relation: Literal["before", "after", "concurrent"] = Field(
        description="a before b: a.latest < b.earliest; a after b: b.latest < a.earliest; "
                    "otherwise concurrent (the intervals overlap: no clock can tell).")
    gap_ns: int = Field(description="Separation of the intervals, ns: > 0 when ordered, "
                                    "≤ 0 (minus the overlap) when concurrent.")


class EventOrder(BaseModel):
    pairs: list[PairOrder] = Field(description="Every unordered pair once, in input order.")
    order: list[str] = Field(description="Ids sorted by interval midpoint (a presentation "
                                         "order: only 'before'/'after' pairs are proven).")
    ordered_pairs: int
    concurrent_pairs: int
    summary: str


# -- the official MCP time server's tools (zones.py), with the bound carried into the zone ----
ZoneName = Annotated[str, Field(min_length=1, max_length=100)]
WallTime = Annotated[str, Field(min_length=1, max_length=20,
                                description="Time to convert in 24-hour format (HH:MM)")]


class ZoneTime(BaseModel):
    """The reference mcp-server-time's TimeResult fields (same names, same formats)."""

    timezone: str = Field(description="The IANA zone name as given.")
    datetime: str = Field(description="Local date and time in the zone, ISO 8601 with the UTC "
                                      "offset, to the second (the reference server's format).")
    day_of_week: str
    is_dst: bool


class CurrentTime(ZoneTime):
    """Current time in a zone from chronotickd's corrected clock, with its error bound."""

    datetime_ns: str = Field(description="The corrected time in the zone, ISO 8601 with nine "
                                         "fractional digits and the UTC offset.")
    earliest: str = Field(description="Earliest possible true time, in the zone (ISO 8601, "
                                      "nine fractional digits).")
    latest: str = Field(description="Latest possible true time, in the zone.")
    corrected_time_ns: int = Field(description="Corrected time, integer ns since the epoch.")
    earliest_ns: int
    latest_ns: int
    bound_ns: int = Field(description="Half-width of [earliest, latest], ns (rounded up).")
    status: str = Field(description="synchronized | freerunning | unsynchronized: check it.")
    source: str
    age_ns: int | None = Field(description="Age of the newest measurement, ns.")
    date_certain: bool = Field(description="False when [earliest, latest] spans a change of "
                                           "local date in the zone (around midnight).")
    summary: str = Field(description="One line for a person.")


class TimeConversion(BaseModel):
    """The reference server's TimeConversionResult, plus the clock the date came from."""

    source: ZoneTime
    target: ZoneTime
    time_difference: str = Field(description="Target's UTC offset minus the source's, "
                                             "e.g. '+7.0h' or '+5.75h'.")
    reference_time: str = Field(description="ChronoTick's corrected time (UTC) that fixed "
                                            "'today' in the source zone.")
    bound_ns: int = Field(description="Bound of that reference time, ns.")
    status: str
    date_certain: bool = Field(description="False when the bound spans midnight in the "
                                           "source zone, so 'today' could be either date.")
    summary: str
