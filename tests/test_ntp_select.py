"""Marzullo falseticker rejection across one polling round."""

from __future__ import annotations

from chronotickd.core.measurement import Measurement
from chronotickd.core.ntp_select import select_truechimers


def m(name: str, offset: float, bound: float) -> Measurement:
    return Measurement(t=100.0, offset=offset, delay=2 * bound, bound=bound, source=name)


def names(ms: tuple[Measurement, ...]) -> set[str]:
    return {x.source for x in ms}


def test_empty_round_selects_nothing() -> None:
    sel = select_truechimers([])
    assert sel.survivors == () and sel.falsetickers == () and sel.interval is None


def test_single_server_survives() -> None:
    sel = select_truechimers([m("a", 0.001, 0.0005)])
    assert names(sel.survivors) == {"a"}
    assert sel.interval == (0.0005, 0.0015)


def test_three_servers_one_falseticker_is_outvoted() -> None:
    sel = select_truechimers([m("a", 0.0010, 0.0005), m("b", 0.0012, 0.0005),
                              m("c", 0.0500, 0.0005)])
    assert names(sel.survivors) == {"a", "b"}
    assert names(sel.falsetickers) == {"c"}
    low, high = sel.interval
    assert low <= 0.0012 - 0.0005 + 1e-12 and high >= 0.0010 + 0.0005 - 1e-12
    assert low <= high


def test_two_disagreeing_servers_have_no_majority() -> None:
    sel = select_truechimers([m("a", 0.0, 0.001), m("b", 0.010, 0.001)])
    assert sel.survivors == ()
    assert names(sel.falsetickers) == {"a", "b"}
    assert sel.interval is None


def test_two_agreeing_servers_both_survive() -> None:
    sel = select_truechimers([m("a", 0.0, 0.001), m("b", 0.0015, 0.001)])
    assert names(sel.survivors) == {"a", "b"}
    assert sel.interval == (0.0005, 0.001)


def test_touching_intervals_count_as_overlapping() -> None:
    # [−1, 1] ms and [1, 3] ms share exactly the point 1 ms
    sel = select_truechimers([m("a", 0.0, 0.001), m("b", 0.002, 0.001)])
    assert names(sel.survivors) == {"a", "b"}
    assert sel.interval is not None
    low, high = sel.interval
    assert abs(low - 0.001) < 1e-12 and abs(high - 0.001) < 1e-12


def test_five_servers_two_falsetickers() -> None:
    round_ = [m("a", 0.0, 0.001), m("b", 0.0005, 0.001), m("c", -0.0005, 0.001),
              m("d", 0.1, 0.001), m("e", -0.2, 0.001)]
    sel = select_truechimers(round_)
    assert names(sel.survivors) == {"a", "b", "c"}
    assert names(sel.falsetickers) == {"d", "e"}


def test_falsetickers_agreeing_with_each_other_still_lose_to_majority() -> None:
    round_ = [m("a", 0.0, 0.001), m("b", 0.0002, 0.001), m("c", 0.0001, 0.001),
              m("d", 0.05, 0.001), m("e", 0.0505, 0.001)]
    sel = select_truechimers(round_)
    assert names(sel.survivors) == {"a", "b", "c"}
    assert names(sel.falsetickers) == {"d", "e"}
