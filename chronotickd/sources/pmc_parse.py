"""Pure parsers for linuxptp's ``pmc`` text output (no I/O, no clock).

``pmc -u -b 0 'GET TIME_STATUS_NP' ...`` prints, per reply::

    \t<portIdentity> seq <n> RESPONSE MANAGEMENT <TLV_NAME>
    \t\t<field>  <value>
    ...

(The PHC itself is read directly, read-only: chronotickd/sources/phc.py, not phc_ctl.)

Everything here is tested on outputs recorded from the real tools (tests/data/ptp/).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# IEEE 1588-2019 table 6 (clockAccuracy enumeration) → seconds. 0xFE means "unknown".
CLOCK_ACCURACY_S: dict[int, float] = {
    0x17: 1e-12, 0x18: 2.5e-12, 0x19: 10e-12, 0x1A: 25e-12, 0x1B: 100e-12, 0x1C: 250e-12,
    0x1D: 1e-9, 0x1E: 2.5e-9, 0x1F: 10e-9, 0x20: 25e-9, 0x21: 100e-9, 0x22: 250e-9,
    0x23: 1e-6, 0x24: 2.5e-6, 0x25: 10e-6, 0x26: 25e-6, 0x27: 100e-6, 0x28: 250e-6,
    0x29: 1e-3, 0x2A: 2.5e-3, 0x2B: 10e-3, 0x2C: 25e-3, 0x2D: 100e-3, 0x2E: 250e-3,
    0x2F: 1.0, 0x30: 10.0,
}
ACCURACY_WORSE_THAN_10S = 0x31
ACCURACY_UNKNOWN = 0xFE

# Port states in which ptp4l is measuring a master: SLAVE (servo locked) and UNCALIBRATED
# (servo settling, or forever with ``free_running 1``: offsets are valid, the clock is not
# touched).
MEASURING_STATES = frozenset({"SLAVE", "UNCALIBRATED"})

_HEADER = re.compile(
    r"^\t(?P<port>\S+) seq (?P<seq>\d+) (?P<action>[A-Z_]+) (?P<kind>MANAGEMENT(?:_ERROR_STATUS)?)"
    r"(?: (?P<tlv>[A-Z0-9_]+))?\s*$")
_FIELD = re.compile(r"^\t\t(?P<key>\S+)(?:\s+(?P<value>.*?))?\s*$")

class PmcParseError(ValueError):
    """pmc printed something this parser cannot trust (names the field and the text)."""


@dataclass(frozen=True, slots=True)
class PmcReply:
    """One management reply: who sent it, which TLV, and its fields as printed."""

    port: str
    seq: int
    tlv: str
    error: bool
    fields: dict[str, str] = field(default_factory=dict)


def parse_pmc(text: str) -> list[PmcReply]:
    """All replies in pmc's output, in order. Lines that are not replies are skipped."""
    replies: list[PmcReply] = []
    current: PmcReply | None = None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            current = PmcReply(m["port"], int(m["seq"]), m["tlv"] or "",
                               m["kind"] == "MANAGEMENT_ERROR_STATUS")
            replies.append(current)
            continue
        f = _FIELD.match(line)
        if f and current is not None:
            current.fields[f["key"]] = f["value"] or ""
            continue
        if not line.startswith("\t"):
            current = None  # "sending: ...", "sorry, ... not supported yet", errors
    return replies


@dataclass(frozen=True, slots=True)
class PortStatus:
    identity: str
    state: str
    log_sync_interval: int | None


@dataclass(frozen=True, slots=True)
class PtpStatus:
    """What one pmc poll says about ptp4l's view of its master (None: not in the output)."""

    master_offset_ns: int | None = None
    ingress_time_ns: int | None = None
    gm_present: bool | None = None
    gm_identity: str | None = None
    ports: tuple[PortStatus, ...] = ()
    mean_path_delay_ns: float | None = None
    offset_from_master_ns: float | None = None
    steps_removed: int | None = None
    gm_clock_class: int | None = None
    gm_clock_accuracy: int | None = None
    # TIME_PROPERTIES_DATA_SET, printed by linuxptp's pmc.c as currentUtcOffset, leap61,
    # leap59, currentUtcOffsetValid, ptpTimescale, timeTraceable, frequencyTraceable (0/1)
    current_utc_offset_s: int | None = None
    utc_offset_valid: bool | None = None  # the master vouches for currentUtcOffset
    ptp_timescale: bool | None = None
    time_traceable: bool | None = None
    frequency_traceable: bool | None = None
    leap61: bool | None = None  # the master announces an inserted second at the day's end
    leap59: bool | None = None  # ... a deleted one
    replies: int = 0

    @property
    def leap_indicator(self) -> int:
        """As NTP's leap indicator: 1 insert, 2 delete, 0 none (or not shown)."""
        return 1 if self.leap61 else 2 if self.leap59 else 0

    @property
    def measuring_port(self) -> PortStatus | None:
        """The port that follows a master (SLAVE preferred over UNCALIBRATED), if any."""
        for wanted in ("SLAVE", "UNCALIBRATED"):
            for p in self.ports:
                if p.state == wanted:
                    return p
        return None

    @property
    def port_state(self) -> str | None:
        port = self.measuring_port
        if port is not None:
            return port.state
        return self.ports[0].state if self.ports else None

    @property
    def sync_interval_s(self) -> float | None:
        port = self.measuring_port or (self.ports[0] if self.ports else None)
        if port is None or port.log_sync_interval is None:
            return None
        return 2.0 ** port.log_sync_interval


def _int(reply: PmcReply, key: str) -> int | None:
    raw = reply.fields.get(key)
    if raw is None:
        return None
    try:
        return int(raw, 0) if raw.lower().startswith(("0x", "-0x")) else int(raw)
    except ValueError:
        raise PmcParseError(f"{reply.tlv}.{key}: expected an integer, got {raw!r}") from None


def _float(reply: PmcReply, key: str) -> float | None:
    raw = reply.fields.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PmcParseError(f"{reply.tlv}.{key}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise PmcParseError(f"{reply.tlv}.{key}: not finite: {raw!r}")
    return value


def _bool(reply: PmcReply, key: str) -> bool | None:
    raw = reply.fields.get(key)
    if raw is None:
        return None
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise PmcParseError(f"{reply.tlv}.{key}: expected true/false, got {raw!r}")


def summarize(replies: list[PmcReply]) -> PtpStatus:
    """Fold the replies of one poll into a ``PtpStatus``; malformed values raise."""
    values: dict[str, object] = {}
    ports: list[PortStatus] = []
    for r in replies:
        if r.error:
            continue
        if r.tlv == "TIME_STATUS_NP":
            if "master_offset" not in r.fields or "ingress_time" not in r.fields:
                raise PmcParseError("TIME_STATUS_NP without master_offset/ingress_time")
            values.update(master_offset_ns=_int(r, "master_offset"),
                          ingress_time_ns=_int(r, "ingress_time"),
                          gm_present=_bool(r, "gmPresent"),
                          gm_identity=r.fields.get("gmIdentity"))
        elif r.tlv == "PORT_DATA_SET":
            state = r.fields.get("portState")
            if not state or not state.isalpha():
                raise PmcParseError(f"PORT_DATA_SET.portState: got {state!r}")
            ports.append(PortStatus(r.fields.get("portIdentity", r.port), state.upper(),
                                    _int(r, "logSyncInterval")))
        elif r.tlv == "CURRENT_DATA_SET":
            values.update(mean_path_delay_ns=_float(r, "meanPathDelay"),
                          offset_from_master_ns=_float(r, "offsetFromMaster"),
                          steps_removed=_int(r, "stepsRemoved"))
        elif r.tlv == "PARENT_DATA_SET":
            values.update(gm_clock_class=_int(r, "gm.ClockClass"),
                          gm_clock_accuracy=_int(r, "gm.ClockAccuracy"))
            values.setdefault("gm_identity", r.fields.get("grandmasterIdentity"))
        elif r.tlv == "TIME_PROPERTIES_DATA_SET":
            values.update(current_utc_offset_s=_int(r, "currentUtcOffset"),
                          utc_offset_valid=_bool(r, "currentUtcOffsetValid"),
                          ptp_timescale=_bool(r, "ptpTimescale"),
                          time_traceable=_bool(r, "timeTraceable"),
                          frequency_traceable=_bool(r, "frequencyTraceable"),
                          leap61=_bool(r, "leap61"), leap59=_bool(r, "leap59"))
    mpd = values.get("mean_path_delay_ns")
    if isinstance(mpd, float) and mpd < 0:
        raise PmcParseError(f"CURRENT_DATA_SET.meanPathDelay: negative ({mpd})")
    return PtpStatus(ports=tuple(ports), replies=len(replies), **values)  # type: ignore[arg-type]


def parse_pmc_status(text: str) -> PtpStatus:
    return summarize(parse_pmc(text))


def gm_accuracy_s(code: int | None, unknown_s: float) -> float:
    """Seconds the grandmaster claims for itself; ``unknown_s`` for 0xFE or absent."""
    if code is None or code == ACCURACY_UNKNOWN:
        return unknown_s
    if code in CLOCK_ACCURACY_S:
        return CLOCK_ACCURACY_S[code]
    if code == ACCURACY_WORSE_THAN_10S:
        return math.inf
    return unknown_s  # reserved / profile-specific codes


# -- pmc failures ---------- -----------------------------------------------------------------
def pmc_failure(text: str) -> str | None:
    """A one-line reason when pmc's output says it could not talk to ptp4l, else None."""
    low = text.lower()
    if "permission denied" in low:
        return ("permission denied opening ptp4l's management socket (pmc: "
                f"{_first_error_line(text)}); run chronotickd as root or in ptp4l's group")
    if "failed to open transport" in low or "failed to create pmc" in low:
        return f"pmc could not open its socket ({_first_error_line(text)})"
    return None


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("sending:") and not line.startswith("\t"):
            return re.sub(r"^\w+\[[\d.]+\]:\s*", "", s)
    return text.strip()[:120]
