"""When to poll next: chrony-like minpoll/maxpoll adaptation. Pure: time is passed in.

Why this shape:

- *An initial burst* (``burst`` polls ``burst_interval_s`` apart) gives the engine enough
  samples for a status and a first slope within seconds instead of minutes.
- *Lengthen while predictions hold.* Each accepted measurement whose residual (measurement −
  prediction) stays well inside the served bound is evidence that the clock is predictable at
  this interval; after a few in a row the interval doubles, up to ``maxpoll_s``. Polls are the
  cost (server load, and for pools their rate limits), so a clock that keeps its line is asked
  rarely.
- *Shorten on large residuals.* A residual near the bound means the clock wandered more than
  the interval allows: the interval halves (never below ``minpoll_s``).
- *Confirm a suspected step by a burst.* A measurement outside the bound (``outlier`` or
  ``step``) is either a bad sample or a clock that moved. Waiting for the next long poll to
  decide costs up to ``maxpoll_s`` of wrong answers, so a burst asks now; the burst's polls are
  the only ones closer than ``minpoll_s``.
- *No reply* backs off (doubling from the current interval) so a dead server is not hammered;
  a ``kod_rate`` (the server's kiss-o'-death RATE) doubles the floor itself for the rest of
  the run, like chrony's response to RATE.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTCOMES = ("accepted", "outlier", "step", "no_reply", "kod_rate")


@dataclass(frozen=True, slots=True)
class PollConfig:
    minpoll_s: float = 64.0
    maxpoll_s: float = 1024.0
    burst: int = 4
    burst_interval_s: float = 2.0


class PollPolicy:
    """Decides the next poll time from each poll's outcome (see the module docstring)."""

    # residual / bound below this counts as "the prediction held" (lengthen)
    HOLD_RATIO = 0.5
    # ... above this the interval is too long for this clock (shorten)
    SHORTEN_RATIO = 0.9
    HOLDS_TO_LENGTHEN = 4  # consecutive good polls before the interval doubles

    def __init__(self, cfg: PollConfig) -> None:
        if cfg.minpoll_s <= 0 or cfg.maxpoll_s < cfg.minpoll_s:
            raise ValueError(f"poll limits need 0 < minpoll_s <= maxpoll_s, got "
                             f"{cfg.minpoll_s} and {cfg.maxpoll_s}")
        self.cfg = cfg
        self._floor = cfg.minpoll_s
        self._interval = cfg.minpoll_s
        self._burst_left = max(0, cfg.burst - 1)  # the first poll is the burst's first
        self._holds = 0
        self.polls = 0
        self.bursts = 0

    @property
    def interval_s(self) -> float:
        """The interval between regular (non-burst) polls now."""
        return self._interval

    @property
    def in_burst(self) -> bool:
        return self._burst_left > 0

    def request_burst(self, now: float, n: int = 4) -> float:
        """Poll ``n`` more times ``burst_interval_s`` apart from ``now``; returns the next time
        (the caller polls then and reports each result through ``on_result``)."""
        if n > 0:
            self._burst_left = max(self._burst_left, n)
            self.bursts += 1
        return self._next(now)

    def _next(self, now: float) -> float:
        """Schedule the next poll (one of a burst's while any are left)."""
        if self._burst_left > 0:
            self._burst_left -= 1
            return now + self.cfg.burst_interval_s
        return now + self._interval

    def on_result(self, now: float, outcome: str, residual_s: float = 0.0,
                  bound_s: float = 0.0) -> float:
        """outcome: 'accepted' | 'outlier' | 'step' | 'no_reply' | 'kod_rate'; returns the
        time of the next poll."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown poll outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
        self.polls += 1
        cfg = self.cfg
        if outcome == "kod_rate":
            self._floor = min(2.0 * self._floor, max(cfg.maxpoll_s, self._floor))
            self._interval = max(self._interval, self._floor)
            self._burst_left = 0
            self._holds = 0
            return now + self._interval
        if outcome == "no_reply":
            self._holds = 0
            self._burst_left = 0
            self._interval = min(2.0 * self._interval, cfg.maxpoll_s)
            return now + self._interval
        if outcome in ("outlier", "step"):
            # suspected step (or one that just happened): confirm with a burst, and look
            # again sooner afterwards
            self._holds = 0
            self._interval = max(self._floor, self._interval / 4.0)
            if outcome == "outlier" and self._burst_left == 0:
                self._burst_left = max(1, cfg.burst)
                self.bursts += 1
            return self._next(now)
        # accepted: compare the residual with the bound the engine served before it
        ratio = abs(residual_s) / bound_s if bound_s > 0 else 0.0
        if ratio > self.SHORTEN_RATIO:
            self._holds = 0
            self._interval = max(self._floor, self._interval / 2.0)
        elif ratio < self.HOLD_RATIO and self._burst_left == 0:
            self._holds += 1
            if self._holds >= self.HOLDS_TO_LENGTHEN:
                self._holds = 0
                self._interval = min(2.0 * self._interval, cfg.maxpoll_s)
        return self._next(now)
