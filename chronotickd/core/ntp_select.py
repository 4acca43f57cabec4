"""Falseticker rejection across NTP servers: Marzullo's intersection, as RFC 5905 selects.

Each server's measurement says "the true offset lies in [offset − bound, offset + bound]".
Truechimers' intervals share a common point; a falseticker's does not. We look for the
smallest number of falsetickers ``f`` (< n/2) such that some point lies inside at least
``n − f`` intervals; servers whose interval contains that intersection survive. With no
majority (e.g. two servers that disagree) nobody survives: we cannot tell who is right, and
saying so is better than averaging a wrong clock in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chronotickd.core.measurement import Measurement


@dataclass(frozen=True, slots=True)
class Selection:
    survivors: tuple[Measurement, ...]
    falsetickers: tuple[Measurement, ...]
    interval: tuple[float, float] | None  # the agreed intersection, None without majority


def select_truechimers(round_: Sequence[Measurement]) -> Selection:
    """Split one polling round's measurements (one per server) into survivors and falsetickers."""
    n = len(round_)
    if n == 0:
        return Selection((), (), None)
    edges: list[tuple[float, int]] = []
    for m in round_:
        edges.append((m.offset - m.bound, -1))  # -1 sorts lower edges first at ties
        edges.append((m.offset + m.bound, +1))
    edges.sort()
    for f in range(0, (n + 1) // 2):
        need = n - f
        low = high = None
        count = 0
        for value, kind in edges:
            count -= kind
            if count >= need:
                low = value
                break
        count = 0
        for value, kind in reversed(edges):
            count += kind
            if count >= need:
                high = value
                break
        if low is not None and high is not None and low <= high:
            survivors = tuple(
                m for m in round_ if m.offset - m.bound <= high and m.offset + m.bound >= low
            )
            false = tuple(m for m in round_ if m not in survivors)
            return Selection(survivors, false, (low, high))
    return Selection((), tuple(round_), None)
