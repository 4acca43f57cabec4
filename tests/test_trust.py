"""What the daemon believes of others' claims: the kernel's maxerror and a PTP grandmaster's
quality fields (issue 12 items 5 and 6). Each rule fails its test if it is removed."""

from __future__ import annotations

import pytest

from chronotickd.core.state import KERNEL_UNSYNC_MAXERROR_S
from chronotickd.sources.pmc_parse import PtpStatus
from chronotickd.sources.ptp_quality import GmPolicy, assess
from chronotickd.sources.system_clock import STA_UNSYNC, honest_maxerror, kernel_maxerror


def test_kernel_maxerror_counts_only_when_claimed_and_plausible() -> None:
    assert honest_maxerror(5000, 0) == (5e-3, True)  # chronyd disciplining: 5 ms promise
    # systemd-timesyncd: STA_UNSYNC clear but maxerror 0 → no 1 µs promise
    assert honest_maxerror(0, 0) == (KERNEL_UNSYNC_MAXERROR_S, False)
    assert honest_maxerror(5000, STA_UNSYNC) == (KERNEL_UNSYNC_MAXERROR_S, False)
    assert honest_maxerror(16_000_000, 0) == (KERNEL_UNSYNC_MAXERROR_S, False)
    assert honest_maxerror(-1, 0) == (KERNEL_UNSYNC_MAXERROR_S, False)


def test_kernel_maxerror_reads_this_kernel() -> None:
    bound, synced = kernel_maxerror()
    assert 0 < bound <= KERNEL_UNSYNC_MAXERROR_S
    assert synced or bound == KERNEL_UNSYNC_MAXERROR_S


def _gm(cls: int | None, traceable: bool | None, accuracy: int | None = 0x21) -> PtpStatus:
    return PtpStatus(gm_clock_class=cls, gm_clock_accuracy=accuracy, time_traceable=traceable,
                     frequency_traceable=traceable)


POLICY = GmPolicy(unknown_accuracy_s=1e-4, holdover_accuracy_s=1e-3, untraceable_accuracy_s=1.0)


@pytest.mark.parametrize(("cls", "traceable", "accuracy", "trust", "seconds"), [
    (6, True, 0x21, "traceable", 100e-9),  # GNSS-locked, 100 ns
    (6, True, 0xFE, "traceable", 1e-4),  # locked, accuracy unknown: the documented default
    (7, True, 0x21, "holdover", 100e-9 + 1e-3),
    (187, True, 0x21, "holdover", 100e-9 + 1e-3),
    (6, False, 0x21, "untraceable", 100e-9 + 1.0),  # the flag wins over the class
    (248, False, 0xFE, "untraceable", 1e-4 + 1.0),  # ptp4l's defaults
    (248, True, 0x21, "untraceable", 100e-9 + 1.0),  # free-running claims traceability: no
    (255, None, None, "untraceable", 1e-4 + 1.0),
])
def test_grandmaster_quality_rules(cls: int, traceable: bool | None, accuracy: int | None,
                                   trust: str, seconds: float) -> None:
    q = assess(_gm(cls, traceable, accuracy), POLICY)
    assert q.trust == trust
    assert q.accuracy_s == pytest.approx(seconds)
    assert (q.reason == "") == (trust == "traceable" and accuracy != 0xFE)


def _feed(engine, name: str, kind: str, offset: float, bound: float, n: int = 12) -> None:
    from chronotickd.core.measurement import Measurement

    for i in range(n):
        engine.add(Measurement(t=1000.0 + i, offset=offset, delay=2 * bound, bound=bound,
                               source=name, kind=kind))


def test_ptp_and_ntp_that_disagree_widen_the_bound_over_both() -> None:
    """A grandmaster 37 s off (TAI claimed on a UTC clock) and NTP: neither is believed."""
    from chronotickd.core.engine import Engine

    engine = Engine()
    _feed(engine, "ptp:/run/ptp4l", "ptp", 37.0, 1e-6)
    _feed(engine, "ntp:a", "ntp", 0.0, 50e-6)
    state = engine.snapshot(1012.0)
    ans = state.query(1012.0)
    assert state.disagreement and "disagree" in state.disagreement
    for truth in (37.0, 0.0):  # whichever reference is right, it is inside
        assert ans.offset - ans.bound <= truth <= ans.offset + ans.bound


def test_agreeing_sources_keep_the_tight_bound() -> None:
    from chronotickd.core.engine import Engine

    engine = Engine()
    _feed(engine, "ptp:/run/ptp4l", "ptp", 10e-6, 1e-6)
    _feed(engine, "ntp:a", "ntp", 0.0, 50e-6)
    state = engine.snapshot(1012.0)
    assert state.disagreement == ""
    assert state.source == "ptp" and state.query(1012.0).bound < 20e-6
