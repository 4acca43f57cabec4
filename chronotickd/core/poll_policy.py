"""When to poll one NTP server next: chrony-like iburst, then minpoll … maxpoll.

Pure: time is passed in (monotonic seconds), nothing is read from a clock. One instance per
server address. The interface is fixed (the adaptive policy will live behind it):
``on_result`` records what the last poll gave and returns when to poll next.

Behaviour now (chrony's, simplified):
- the first ``burst`` polls go ``burst_interval_s`` apart (iburst), whatever their outcome;
- then the interval starts at ``minpoll_s`` and doubles after every 4 consecutive accepted
  samples, up to ``maxpoll_s``; an outlier keeps it;
- no reply doubles the interval (RFC 4330 back-off), up to ``maxpoll_s``;
- a Kiss-o'-Death RATE ends any burst and doubles the interval, at least to 2 × minpoll;
- a suspected step asks for a short burst (``request_burst``) to confirm it.

Adaptive (issue 13), when the caller passes the engine's judgement of each sample
(``residual_s``: measurement − the prediction served before it; ``bound_s``: the noise scale
times 3 it is judged against; the replay bench and the engine's ``poll_feedback`` do):
- *lengthen while predictions hold*: ``RAISE_AFTER`` consecutive samples whose residual stays
  under half of ``bound_s`` (the prediction error hides in the noise) double the interval;
- *shorten on large residuals*: an accepted sample whose residual exceeds ``bound_s`` halves
  it (the clock wandered more than this interval allows), never below ``minpoll_s``;
- *confirm a suspected step at once*: an outlier at an interval of ``burst_after_s`` or more
  asks for a burst (at long polls waiting for the next poll to decide costs a whole interval
  of wrong answers), and halves the interval;
- *no reply* backs off to at most ``maxpoll_s`` / 4 (the estimate ages while nobody answers;
  the end of an outage is seen within minutes, not after the estimate has gone void).
Without that judgement (``bound_s`` = 0) the behaviour is chrony's, above.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTCOMES = ("accepted", "outlier", "step", "no_reply", "kod_rate")
RAISE_AFTER = 4  # consecutive accepted samples before the interval doubles
HOLD_RATIO = 0.5  # residual / bound under this: the prediction held
SHORTEN_RATIO = 1.0  # ... over this: the interval is too long for this clock
KOD_RATE_CAP_S = 1024.0  # a RATE kiss may push the interval up to this even over maxpoll_s


@dataclass(frozen=True, slots=True)
class PollConfig:
    minpoll_s: float = 64.0
    maxpoll_s: float = 1024.0
    burst: int = 4  # requests in the initial burst
    burst_interval_s: float = 2.0
    # an outlier at this interval or longer asks for a burst to confirm it (adaptive only)
    burst_after_s: float = 128.0


class PollPolicy:
    def __init__(self, cfg: PollConfig) -> None:
        self.cfg = cfg
        self._interval = cfg.minpoll_s
        self._burst_left = max(0, cfg.burst - 1)  # the first poll happens at once
        self._good_run = 0
        self._judged = False  # the caller passes the engine's judgement (adaptive rules)

    def on_result(self, now: float, outcome: str, residual_s: float = 0.0,
                  bound_s: float = 0.0) -> float:
        """Record a poll's outcome ('accepted' | 'outlier' | 'step' | 'no_reply' | 'kod_rate')
        at monotonic time ``now``; return the time of the next poll."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown poll outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        cfg = self.cfg
        if outcome == "kod_rate":
            self._burst_left = 0
            self._good_run = 0
            # honoured even past maxpoll_s: the server asked for less (up to 1024 s)
            cap = max(cfg.maxpoll_s, KOD_RATE_CAP_S)
            self._interval = min(cap, max(self._interval * 2, cfg.minpoll_s * 2))
            return now + self._interval
        if outcome == "step" and self._burst_left == 0:
            return self.request_burst(now)
        if self._burst_left > 0:
            self._burst_left -= 1
            return now + cfg.burst_interval_s
        if bound_s > 0:
            self._judged = True
        if bound_s > 0 and outcome in ("accepted", "outlier"):
            return self._adapt(now, outcome, abs(residual_s) / bound_s)
        if outcome == "accepted":
            self._good_run += 1
            if self._good_run >= RAISE_AFTER:
                self._good_run = 0
                self._interval = min(cfg.maxpoll_s, self._interval * 2)
        elif outcome == "no_reply":
            self._good_run = 0
            # judged polling backs off only to a quarter of maxpoll: the estimate ages while
            # the server is silent, and the end of an outage should be seen within minutes
            cap = max(cfg.minpoll_s, cfg.maxpoll_s / 4) if self._judged else cfg.maxpoll_s
            self._interval = max(self._interval, min(cap, self._interval * 2))
        return now + self._interval

    def _adapt(self, now: float, outcome: str, ratio: float) -> float:
        """The adaptive rules (module docstring) for a sample the engine judged."""
        cfg = self.cfg
        if outcome == "outlier":
            self._good_run = 0
            if self._interval >= cfg.burst_after_s:
                self._interval = max(cfg.minpoll_s, self._interval / 2)
                return self.request_burst(now, 2)
            return now + self._interval
        if ratio > SHORTEN_RATIO:
            self._good_run = 0
            self._interval = max(cfg.minpoll_s, self._interval / 2)
        elif ratio < HOLD_RATIO:
            self._good_run += 1
            if self._good_run >= RAISE_AFTER:
                self._good_run = 0
                self._interval = min(cfg.maxpoll_s, self._interval * 2)
        else:
            self._good_run = 0
        return now + self._interval

    def request_burst(self, now: float, n: int = 4) -> float:
        """Confirm a suspected step: ``n`` polls (at most the configured burst)
        ``burst_interval_s`` apart, then back to the current interval."""
        self._burst_left = max(0, min(n, max(self.cfg.burst, 1)) - 1)
        self._good_run = 0
        return now + self.cfg.burst_interval_s

    @property
    def interval_s(self) -> float:
        """The current poll interval."""
        return self.cfg.burst_interval_s if self._burst_left > 0 else self._interval
