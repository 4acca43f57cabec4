"""Leap seconds: the engine fits leap-free θ; UTC is recovered only at the answer. Pure.

References (NTP's leap indicator, PTP's leap59/leap61) announce a leap for the end of the
current UTC day (RFC 5905: "in the last minute of the current day"), which is when the Linux
kernel applies STA_INS/STA_DEL too. The engine keeps θ continuous: a measurement taken after an
inserted second reads 1 s less against the continuous scale, so it gets +1 s back before it
reaches the fit (−1 s for a deleted one). An answer converts back: past the leap instant the
served offset is θ − 1 s − δ. If the kernel inserted the second too, REALTIME stepped back
1 s, δ fell by 1 s, and the offset stays ≈ 0; if it did not, the answer's offset is −1 s,
which is the truth (the system clock is now 1 s ahead of UTC).

Two doubts are covered by widening, never by guessing:

- ``confirmed`` is False until a measurement taken after the leap agrees that the reference
  applied it. Until then (and for the leap second itself) the answer covers both UTC with and
  without the leap (±0.5 s).
- ``smear_doubt``: the references disagree (one announces the leap, another does not, as a
  smearing server such as Google's does not); UTC according to the reference may then be a
  24 h linear smear (noon to noon) instead of a step. The answer covers both curves.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86400.0
SMEAR_S = 86400.0  # the common smear: 24 h, centred on the leap (noon to noon)

LEAP_NONE = 0
LEAP_INSERT = 1
LEAP_DELETE = 2


@dataclass(frozen=True, slots=True)
class Leap:
    """One announced or applied leap second, on the engine's raw axis."""

    raw: float  # raw instant at which UTC reaches the leap (the day's end)
    utc: float  # that instant in POSIX seconds (a multiple of 86400)
    seconds: int  # +1 inserted, −1 deleted
    confirmed: bool = False  # a measurement after it showed the reference applied it
    smear_doubt: bool = False  # references disagree: a smear is as plausible as the step


def next_midnight(utc: float) -> float:
    """The end of the UTC day containing POSIX time ``utc``."""
    return (utc // DAY_S + 1.0) * DAY_S


def leap_seconds(indicator: int) -> int:
    """NTP leap indicator → seconds (+1 insert, −1 delete, 0 none or alarm)."""
    return {LEAP_INSERT: 1, LEAP_DELETE: -1}.get(indicator, 0)


def correction(leaps: tuple[Leap, ...], raw: float) -> tuple[float, float]:
    """(offset to add, extra bound) turning a leap-free θ at ``raw`` into UTC."""
    shift = 0.0
    extra = 0.0
    for lp in leaps:
        step = -float(lp.seconds) if raw >= lp.raw else 0.0
        lo = hi = step
        if not lp.confirmed and raw >= lp.raw:
            lo, hi = min(lo, 0.0), max(hi, 0.0)  # applied or not: both
        if lp.smear_doubt:
            frac = min(1.0, max(0.0, (raw - (lp.raw - SMEAR_S / 2)) / SMEAR_S))
            smear = -float(lp.seconds) * frac
            lo, hi = min(lo, smear), max(hi, smear)
        shift += (lo + hi) / 2
        extra += (hi - lo) / 2
    return shift, extra
