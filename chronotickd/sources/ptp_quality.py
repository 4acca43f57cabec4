"""How much a PTP grandmaster's word is worth: clockClass, traceability and clockAccuracy.

A PTP master says how good it is in its Announce messages (IEEE 1588-2019 §7.6.2):
``clockClass`` (what it is locked to, or that it is in holdover, or free-running),
``timeTraceable`` / ``frequencyTraceable`` (whether its time and rate trace to a primary
reference such as UTC from GNSS) and ``clockAccuracy`` (its own error, a coded range). The
seed took all of that at face value and counted an "unknown" accuracy as 0 s: a free-running
ptp4l with default settings (class 248, not traceable, accuracy 0xFE) was served as a
microsecond-accurate UTC reference. The rules here (docs/ptp.md, "Grandmaster quality"):

========================  ====================================  =============================
trust                     when                                  error added to the bound
========================  ====================================  =============================
``traceable``             timeTraceable and class 6 or 13       clockAccuracy (0xFE/unknown:
                          (locked to a primary reference)       ``ptp.unknown_gm_accuracy_s``)
``holdover``              timeTraceable and a holdover or       the above +
                          degraded class: 7, 14, 52, 58,        ``ptp.holdover_gm_accuracy_s``
                          135–165, 187, 193
``untraceable``           timeTraceable false, class 248        the above +
                          (default, free-running), 255, or      ``ptp.untraceable_gm_accuracy_s``
                          anything else
========================  ====================================  =============================

An untraceable master may be right to the nanosecond or off by an hour: nothing it says
bounds its distance from UTC, so by default it gets a 1 s allowance and loses selection to
any NTP source; an operator who knows better (a lab grandmaster set from NTP) lowers the key.
Pure: no I/O, tested on recorded pmc output.
"""

from __future__ import annotations

from dataclasses import dataclass

from chronotickd.sources.pmc_parse import PtpStatus, gm_accuracy_s

LOCKED_CLASSES = frozenset({6, 13})
HOLDOVER_CLASSES = frozenset({7, 14, 52, 58, 135, 140, 150, 160, 165, 187, 193})


@dataclass(frozen=True, slots=True)
class GmPolicy:
    """The allowances (seconds) of the table above; config keys ``ptp.*_gm_accuracy_s``."""

    unknown_accuracy_s: float = 100e-6
    holdover_accuracy_s: float = 1e-3
    untraceable_accuracy_s: float = 1.0


@dataclass(frozen=True, slots=True)
class GmQuality:
    trust: str  # traceable | holdover | untraceable
    accuracy_s: float  # what the grandmaster's error adds to every measurement's bound
    reason: str  # one line for `sources` (empty when traceable with a stated accuracy)


def assess(status: PtpStatus, policy: GmPolicy) -> GmQuality:
    """Classify the grandmaster of one pmc poll and price its claims (see the module doc)."""
    accuracy = gm_accuracy_s(status.gm_clock_accuracy, policy.unknown_accuracy_s)
    notes: list[str] = []
    if status.gm_clock_accuracy is None or accuracy == policy.unknown_accuracy_s:
        notes.append(f"accuracy unknown, {policy.unknown_accuracy_s * 1e6:g} µs assumed")
    cls = status.gm_clock_class
    if status.time_traceable is not True:
        trust = "untraceable"
        notes.insert(0, "grandmaster time not traceable (timeTraceable "
                     f"{'absent' if status.time_traceable is None else 'false'})")
    elif cls in LOCKED_CLASSES:
        trust = "traceable"
    elif cls in HOLDOVER_CLASSES:
        trust = "holdover"
        notes.insert(0, f"grandmaster in holdover or degraded (clockClass {cls})")
    else:
        trust = "untraceable"
        notes.insert(0, f"clockClass {cls} is not locked to a primary reference")
    if trust == "holdover":
        accuracy += policy.holdover_accuracy_s
    elif trust == "untraceable":
        accuracy += policy.untraceable_accuracy_s
    if trust != "traceable" and status.frequency_traceable is False:
        notes.append("frequency not traceable")
    return GmQuality(trust, accuracy, "; ".join(notes))
