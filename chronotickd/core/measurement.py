"""What a time source hands to the engine: one offset measurement with its own error bound.

Sign convention everywhere: ``offset = reference − system`` (NTP's sign), in seconds.
Corrected time is therefore ``system_time + offset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """How much the served answer can be trusted (ClockBound's vocabulary, chrony's meaning)."""

    SYNCHRONIZED = "synchronized"  # fresh measurements back the estimate
    FREERUNNING = "freerunning"  # estimate is stale or restored; bound grows with age
    UNSYNCHRONIZED = "unsynchronized"  # no usable estimate: system clock with a wide bound


@dataclass(frozen=True, slots=True)
class Measurement:
    """One offset measurement of the system clock against a reference.

    ``t`` is the system-clock time (seconds) the offset refers to, e.g. the midpoint of an NTP
    exchange. ``bound`` is the half-width of the interval that must contain the true offset at
    ``t`` given only this measurement: for NTP ``delay/2 + root_delay/2 + root_dispersion``
    (the path asymmetry cannot be observed, so half the round trip is the honest limit).
    """

    t: float
    offset: float
    delay: float
    bound: float
    source: str = "ntp"
    kind: str = "ntp"
    stratum: int = 0

    @staticmethod
    def from_ntp(
        t: float,
        offset: float,
        delay: float,
        root_delay: float = 0.0,
        root_dispersion: float = 0.0,
        source: str = "ntp",
        stratum: int = 0,
    ) -> Measurement:
        """An NTP measurement with RFC 5905's bound: ``delay/2 + root_delay/2 + root_disp``."""
        delay = max(delay, 0.0)
        bound = delay / 2.0 + max(root_delay, 0.0) / 2.0 + max(root_dispersion, 0.0)
        return Measurement(t, offset, delay, bound, source=source, kind="ntp", stratum=stratum)
