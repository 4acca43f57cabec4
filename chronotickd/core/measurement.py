"""What a time source hands to the engine: one offset measurement with its own error bound.

Sign convention everywhere: ``offset = reference − system``, in seconds. On the engine's time
base (chronotickd/core/timebase.py) "system" is ``raw + epoch``: ``t`` is CLOCK_MONOTONIC_RAW
and ``offset`` is θ = reference − (t + epoch). Replay and simulation use epoch 0 and their
trace's time axis.
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

    ``t`` is the raw time (seconds) the offset refers to, e.g. the midpoint of an NTP
    exchange. ``leap`` is the reference's leap announcement (NTP's leap indicator: 0 none,
    1 insert, 2 delete at the end of the current UTC day; PTP's leap61/leap59 mapped alike).
    ``bound`` is the half-width of the interval that must contain the true offset at ``t``
    given only this measurement: for NTP ``delay/2 + root_delay/2 + root_dispersion``
    (the path asymmetry cannot be observed, so half the round trip is the honest limit).
    """

    t: float
    offset: float
    delay: float
    bound: float
    source: str = "ntp"
    kind: str = "ntp"
    stratum: int = 0
    leap: int = 0

    @staticmethod
    def from_ntp(
        t: float,
        offset: float,
        delay: float,
        root_delay: float = 0.0,
        root_dispersion: float = 0.0,
        source: str = "ntp",
        stratum: int = 0,
        leap: int = 0,
    ) -> Measurement:
        """An NTP measurement with RFC 5905's bound: ``delay/2 + root_delay/2 + root_disp``."""
        delay = max(delay, 0.0)
        bound = delay / 2.0 + max(root_delay, 0.0) / 2.0 + max(root_dispersion, 0.0)
        return Measurement(t, offset, delay, bound, source=source, kind="ntp", stratum=stratum,
                           leap=leap)
