"""Honest ordering of events known only as time intervals (pure: no daemon, no clock).

Rule (Meta's fbclock, Spanner's TrueTime): A provably happened before B only when
``A.latest < B.earliest``. Intervals that overlap are concurrent as far as clocks can tell,
however close their midpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

Relation = Literal["before", "after", "concurrent"]


class Interval(Protocol):
    id: str
    earliest_ns: int
    latest_ns: int


def relation(a: Interval, b: Interval) -> tuple[Relation, int]:
    """How ``a`` relates to ``b``, and the gap between the intervals (≤ 0: the overlap)."""
    if a.latest_ns < b.earliest_ns:
        return "before", b.earliest_ns - a.latest_ns
    if b.latest_ns < a.earliest_ns:
        return "after", a.earliest_ns - b.latest_ns
    return "concurrent", max(b.earliest_ns - a.latest_ns, a.earliest_ns - b.latest_ns)


def pairwise(events: Sequence[Interval]) -> list[tuple[str, str, Relation, int]]:
    """Every unordered pair once, ``(a, b, relation of a to b, gap_ns)``, in input order."""
    out = []
    for i, a in enumerate(events):
        for b in events[i + 1:]:
            rel, gap = relation(a, b)
            out.append((a.id, b.id, rel, gap))
    return out


def presentation_order(events: Sequence[Interval]) -> list[str]:
    """Ids by interval midpoint: a linear order consistent with every proven relation.

    If a.latest < b.earliest then mid(a) < mid(b), so this never contradicts a 'before';
    ties (and everything concurrent) keep no meaning beyond display.
    """
    return [e.id for e in sorted(events, key=lambda e: (e.earliest_ns + e.latest_ns, e.id))]
