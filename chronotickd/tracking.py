"""The ``tracking`` view (``chronyc tracking`` for ChronoTick), built from published state only.

One function shared by the ``tracking`` op (handlers.py) and the metrics endpoint (metrics.py),
so a scrape and ``chronotick-cli tracking`` can never disagree on what a field means. Pure
reading of a ``Published`` snapshot: no engine call, no lock, no wait.

Frequency: the slope of the served fit, ``d(offset)/dt`` with offset = reference − clock, in
ppm. Positive means the clock the engine models runs slow against the reference. Which clock
that is depends on the engine's time axis, reported as ``time_axis``: ``realtime`` (the system
clock) today; ``monotonic_raw`` once the engine models the reference against
CLOCK_MONOTONIC_RAW (issue 12), where the frequency is the oscillator's own frequency error,
untouched by whatever disciplines the system clock.
"""

from __future__ import annotations

import math
from typing import Any

from chronotickd.core.state import TimeAnswer
from chronotickd.publish import Published

# NTP leap indicator → name (RFC 5905 §7.3); also the names of ``leap`` in the tracking reply
LEAP_NAMES = {0: "none", 1: "insert", 2: "delete", 3: "alarm"}
LEAP_STATES = ("none", "insert", "delete", "alarm", "unknown")


def _ns(seconds: float | None) -> int | None:
    return round(seconds * 1e9) if seconds is not None and math.isfinite(seconds) else None


def selected_row(pub: Published) -> dict[str, Any] | None:
    """The published source row of the track the engine selected (None when none is)."""
    names = [t.name for t in pub.clock.tracks if t.selected]
    if not names:
        return None
    return next((r for r in pub.sources if r.get("name") == names[0]), {"name": names[0]})


def leap_state(pub: Published, row: dict[str, Any] | None) -> str:
    """What is known of a pending leap second: the daemon's own ``leap`` status when the engine
    publishes one, else the selected server's leap indicator, else ``unknown``."""
    leap = pub.status.get("leap")
    if isinstance(leap, dict):  # a richer record: take its state/name field
        leap = leap.get("state") or leap.get("pending")
    if isinstance(leap, str) and leap:
        return leap
    indicator = (row or {}).get("leap")
    if isinstance(indicator, int) and indicator in LEAP_NAMES:
        return LEAP_NAMES[indicator]
    return "unknown"


def freq_stddev(fit: Any) -> float:
    """Standard error of the fitted frequency (chrony's skew), as the served bound uses it."""
    var = fit.var_freq if fit.serve_var_freq is None else fit.serve_var_freq
    return math.sqrt(max(0.0, var))


def tracking_result(pub: Published, now_ns: int, ans: TimeAnswer) -> dict[str, Any]:
    """The reply of ``tracking`` for the answer ``ans`` at system time ``now_ns``."""
    clock = pub.clock
    fit = clock.fit
    row = selected_row(pub)
    last_ns = _ns(ans.as_of) if fit is not None and ans.as_of else None  # as REALTIME
    return {
        "status": str(ans.status),
        "source": ans.source,
        "reference": row.get("name") if row else None,
        "stratum": row.get("stratum") if row else None,
        "offset_ns": round(ans.offset * 1e9),
        "bound_ns": math.ceil(ans.bound * 1e9) if ans.bound < 2**62 / 1e9 else 2**62,
        "last_offset_ns": _ns(row.get("last_offset")) if row else None,
        "frequency_ppm": fit.freq * 1e6 if fit is not None else None,
        "frequency_error_ppm": freq_stddev(fit) * 1e6 if fit is not None else None,
        "residual_ns": _ns(fit.sigma) if fit is not None else None,
        "samples": fit.n if fit is not None else 0,
        "root_delay_ns": _ns(row.get("root_delay")) if row else None,
        "root_dispersion_ns": _ns(row.get("root_dispersion")) if row else None,
        "leap": leap_state(pub, row),
        "last_update_ns": last_ns,
        "age_ns": max(0, now_ns - last_ns) if last_ns is not None else None,
        "poll_interval_s": row.get("poll_interval_s") if row else None,
        "restored": bool(clock.restored),
        "time_axis": "monotonic_raw" if getattr(clock, "epoch", None) is not None
        else "realtime",
        "system_time_ns": now_ns,
    }
