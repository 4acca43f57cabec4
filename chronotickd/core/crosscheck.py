"""Cross-checking sources of different kinds (PTP against NTP) before trusting either.

Each source's bound is a promise about *its* reference. Two references that each look
healthy can still disagree: a grandmaster that announces a wrong timescale (a PTP master on
CLOCK_REALTIME claiming the TAI timescale is 37 s off), one set by hand, a spoofed NTP path.
When the selected track's interval and a fresh track of another kind do not overlap, at
least one of them is wrong and nothing here can tell which; so the served interval covers
both until they agree again, and `status` says so (ClockBound calls this state Disrupted).

Pure arithmetic on (offset, bound) pairs evaluated at the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Estimate:
    """One track's answer at the instant being checked."""

    name: str
    kind: str
    offset: float
    bound: float


@dataclass(frozen=True, slots=True)
class Disagreement:
    selected: str
    other: str
    difference: float  # other.offset − selected.offset (s)
    cover: float  # half-width around the selected offset that holds both intervals

    def describe(self) -> str:
        return (f"{self.selected} and {self.other} disagree by {self.difference * 1e3:+.3f} ms, "
                "more than their bounds allow; serving a bound that covers both")


def cross_check(selected: Estimate, others: list[Estimate]) -> Disagreement | None:
    """The worst disagreement of ``selected`` with a track of another kind, or None.

    Only kinds are compared (a PTP port against NTP servers): NTP servers among themselves are
    already voted on per round (Marzullo), and tracks of one kind share their failure modes.
    """
    worst: Disagreement | None = None
    for o in others:
        if o.kind == selected.kind or o.name == selected.name:
            continue
        diff = o.offset - selected.offset
        if abs(diff) <= selected.bound + o.bound:
            continue
        cover = abs(diff) + o.bound
        if worst is None or cover > worst.cover:
            worst = Disagreement(selected.name, o.name, diff, cover)
    return worst
