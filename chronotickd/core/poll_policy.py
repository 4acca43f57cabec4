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
  of wrong answers), and halves the interval (a public server, ``confirm_bursts`` off: only
  the halving);
- *no reply* backs off to at most ``maxpoll_s`` / 4 (the estimate ages while nobody answers;
  the end of an outage is seen within minutes, not after the estimate has gone void);
- *re-acquire after a silence*: the first reply after ``REACQUIRE_AFTER`` polls in a row got
  none starts the ramp again from ``minpoll_s`` (under a budget, borrowed like the start's),
  as ntpd's ``iburst`` does whenever a server was unreachable: the clock's frequency moved
  while nobody answered, and a line through one new reply and hour-old ones pins it slowly.
Without that judgement (``bound_s`` = 0) the behaviour is chrony's, above.

A poll *budget* (``budget_s``, issue 13): polls are spent no faster than one per
``budget_s`` on average, as a fixed poll at that interval would spend them, but where they
help most. The policy keeps a credit (a token bucket: a fixed poll sends its first request at
once, so the first poll is free, then one is earned per ``budget_s``, one spent per poll, at
most ``CREDIT_MAX`` saved): the initial burst, a ramp after it (the interval doubles from
``minpoll_s`` with every accepted sample up to ``budget_s``) and the bursts that confirm a
suspected step borrow (up to ``DEBT_MAX``); intervals then stretch by 1/``REPAY_POLLS`` until
the debt is repaid exactly, never past the time polled so far (a young fit). Without a debt
the polls fall on the budget's grid, the first poll + k·``budget_s``: a fixed poll's times,
so a late reply does not shift every later poll, and once the start's debt is repaid the
policy and a fixed poll measure the same instants (what the two are compared on is then what
the policy did differently, not where each grid fell among the clock's events:
``benchmarks/bench_poll_phase.py``). Shortening on large residuals spends only credit saved
before (a Kiss-o'-Death back-off saves it); the interval is not lengthened past
``budget_s``, and a silent server is polled at it too.
Why: on a stationary clock a uniform interval is already the best use of a fixed number of
polls (the error grows convexly with the interval), so the gain is in moving polls to where
the clock is new or changed: the start, and after a step.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTCOMES = ("accepted", "outlier", "step", "no_reply", "kod_rate")
RAISE_AFTER = 4  # consecutive accepted samples before the interval doubles
HOLD_RATIO = 0.5  # residual / bound under this: the prediction held
SHORTEN_RATIO = 1.0  # ... over this: the interval is too long for this clock
KOD_RATE_CAP_S = 1024.0  # a RATE kiss may push the interval up to this even over maxpoll_s
CREDIT_MAX = 4.0  # polls a budgeted policy may save for later
DEBT_MAX = 8.0  # polls it may borrow (bursts)
REPAY_POLLS = 16.0  # a debt is repaid at most 1/REPAY_POLLS of a poll per interval
DEBT_EPS = 1e-6  # credit this close to 0 is no debt (float rounding of the sums)
# polls in a row without a reply after which the next reply restarts the ramp (judged polling):
# a silence, not a lost packet (on a path losing 30 % of its replies, 8 in a row happen once
# in 150 000 polls)
REACQUIRE_AFTER = 8


@dataclass(frozen=True, slots=True)
class PollConfig:
    minpoll_s: float = 64.0
    maxpoll_s: float = 1024.0
    burst: int = 4  # requests in the initial burst
    burst_interval_s: float = 2.0
    # an outlier at this interval or longer asks for a burst to confirm it (adaptive only)
    burst_after_s: float = 128.0
    # the mean interval polls are budgeted at (module docstring); None: no budget
    budget_s: float | None = None
    # bursts after the initial one (to confirm a suspected step); off for public servers,
    # which get a burst at start only (their operators' terms): the interval halves instead
    confirm_bursts: bool = True


class PollPolicy:
    def __init__(self, cfg: PollConfig) -> None:
        self.cfg = cfg
        self._interval = cfg.minpoll_s
        # under a budget, after the burst the interval doubles with every accepted sample
        # until it reaches the budget's (a ramp: the young fit needs samples spread over
        # time, not a long wait on a slope from samples 2 s apart)
        self._ramp = cfg.budget_s is not None
        self._ramping = False  # the interval just chosen was the ramp's
        self._burst_left = max(0, cfg.burst - 1)  # the first poll happens at once
        self._good_run = 0
        self._silent = 0  # polls in a row without a reply
        self._judged = False  # the caller passes the engine's judgement (adaptive rules)
        self.credit = 0.0  # budgeted polls saved (negative: borrowed)
        self._last_poll: float | None = None
        self._first_poll = 0.0

    def _account(self, now: float) -> None:
        """A poll happened at ``now``: earn credit for the time since the last, spend one."""
        b = self.cfg.budget_s
        if b is None:
            return
        if self._last_poll is not None:
            self.credit += max(0.0, now - self._last_poll) / b
        else:  # a fixed poll at b sends its first request at once: the first poll is free
            self._first_poll = now
            self.credit = 1.0
        self.credit = min(CREDIT_MAX, self.credit - 1.0)
        self._last_poll = now

    def _within_budget(self, now: float, t_next: float) -> float:
        """``t_next`` pushed back as far as the budget requires (bursts excepted)."""
        b = self.cfg.budget_s
        if b is None or self._burst_left > 0:
            return t_next
        tau = t_next - now
        # faster than the budget: the start's ramp may borrow (up to DEBT_MAX), anything
        # else spends only credit saved before
        floor = -DEBT_MAX if self._ramp or self._ramping else 0.0
        if tau < b and self.credit + tau / b - 1.0 >= floor:
            return t_next
        # otherwise at least the budget's interval, stretched by at most 1/REPAY_POLLS of it
        # while a debt is left (the last stretch repays exactly what is left)
        debt = -self.credit if self.credit < -DEBT_EPS else 0.0
        least = b * (1.0 + min(debt, 1.0 / REPAY_POLLS))
        if debt == 0.0 and tau >= b * (1.0 - DEBT_EPS):
            # no debt: on the budget's own grid, the first poll + k·b (a fixed poll's times),
            # the slot nearest the rules' time. Why: a token bucket anchored at the start
            # spends exactly what a fixed poll would, and a poll answered late (a slow reply,
            # a coarse timer) does not shift every later one
            slot = self._first_poll + round((t_next - self._first_poll) / b) * b
            if slot >= now + 0.5 * b:
                return slot
        # ... but not past the time polled so far: a young fit extrapolated further than its
        # own span multiplies its slope error (after the ramp, the first stretches were the
        # largest errors of a run)
        least = min(least, max(self.cfg.maxpoll_s, b), max(b, now - self._first_poll))
        return max(t_next, now + least)

    def on_result(self, now: float, outcome: str, residual_s: float = 0.0,
                  bound_s: float = 0.0) -> float:
        """Record a poll's outcome ('accepted' | 'outlier' | 'step' | 'no_reply' | 'kod_rate')
        at monotonic time ``now``; return the time of the next poll."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown poll outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        self._account(now)
        self._ramping = False
        return self._within_budget(now, self._next(now, outcome, residual_s, bound_s))

    def _next(self, now: float, outcome: str, residual_s: float, bound_s: float) -> float:
        """The next poll time by the rules, before the budget."""
        cfg = self.cfg
        silence = self._silent
        self._silent = silence + 1 if outcome == "no_reply" else 0
        if outcome == "kod_rate":
            self._burst_left = 0
            self._good_run = 0
            # honoured even past maxpoll_s: the server asked for less (up to 1024 s)
            cap = max(cfg.maxpoll_s, KOD_RATE_CAP_S)
            self._interval = min(cap, max(self._interval * 2, cfg.minpoll_s * 2))
            return now + self._interval
        # (while ramping the polls are already dense: no burst on top, which a late debt
        # could not repay; after a silence the clock has usually moved, the ramp's first
        # replies look like a step, and a burst there ran the outage scenario's debt past the
        # end of a 6 h run)
        if outcome == "step" and self._burst_left == 0 and not self._ramp:
            if cfg.confirm_bursts:
                return self.request_burst(now)
            self._good_run = 0
            self._interval = max(cfg.minpoll_s, self._interval / 2)
            return now + self._interval
        if self._burst_left > 0:
            self._burst_left -= 1
            return now + cfg.burst_interval_s
        if bound_s > 0:
            self._judged = True
        if bound_s > 0 and outcome == "accepted" and silence >= REACQUIRE_AFTER:
            # re-acquire: the ramp again, from minpoll (module docstring)
            self._interval = cfg.minpoll_s
            self._good_run = 0
            self._ramp = cfg.budget_s is not None
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
            if cfg.budget_s is not None:
                # a budget is already a polite rate: hold it while the server is silent, and
                # see the end of an outage as soon as a fixed poll would (backing off to
                # 256 s cost the outage scenario 15 % of its accuracy)
                cap = self._longest()
            self._interval = max(self._interval, min(cap, self._interval * 2))
        return now + self._interval

    def _adapt(self, now: float, outcome: str, ratio: float) -> float:
        """The adaptive rules (module docstring) for a sample the engine judged."""
        cfg = self.cfg
        if outcome == "outlier":
            self._good_run = 0
            if self._interval >= cfg.burst_after_s:
                self._interval = max(cfg.minpoll_s, self._interval / 2)
                if cfg.confirm_bursts:
                    return self.request_burst(now, 2)
            return now + self._interval
        self._ramping = self._ramp
        if self._ramp:
            nxt = now + self._interval
            self._ramp = self._interval < self._longest()
            self._interval = min(self._longest(), self._interval * 2)
            return nxt
        if ratio > SHORTEN_RATIO:
            self._good_run = 0
            self._interval = max(cfg.minpoll_s, self._interval / 2)
        elif ratio < HOLD_RATIO:
            self._good_run += 1
            if self._good_run >= RAISE_AFTER:
                self._good_run = 0
                self._interval = min(self._longest(), self._interval * 2)
        else:
            self._good_run = 0
        return now + self._interval

    def _longest(self) -> float:
        """The longest interval the adaptive rules may reach: ``maxpoll_s``; under a budget,
        the budget's interval. (Lengthening past it to save credit for later was tried: on
        the bench's stationary clocks every stretch cost more accuracy than the polls it
        saved bought back, the convexity the module docstring names.)"""
        b = self.cfg.budget_s
        if b is None:
            return self.cfg.maxpoll_s
        return min(self.cfg.maxpoll_s, max(self.cfg.minpoll_s, b))

    def request_burst(self, now: float, n: int = 4) -> float:
        """Confirm a suspected step: ``n`` polls (at most the configured burst)
        ``burst_interval_s`` apart, then back to the current interval. Under a budget, only
        as many as the debt limit still allows."""
        n = min(n, max(self.cfg.burst, 1))
        if self.cfg.budget_s is not None:
            n = min(n, int(DEBT_MAX + self.credit) + 1)
            if n <= 1:
                self._good_run = 0
                return now + self.cfg.minpoll_s
        self._burst_left = max(0, n - 1)
        self._good_run = 0
        return now + self.cfg.burst_interval_s

    @property
    def interval_s(self) -> float:
        """The current poll interval."""
        return self.cfg.burst_interval_s if self._burst_left > 0 else self._interval
