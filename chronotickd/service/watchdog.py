"""The systemd watchdog, kept from the asyncio event loop.

``WATCHDOG=1`` is sent by a task on the loop that serves clients, never by a helper thread:
if the loop hangs, the pings stop and systemd kills and restarts the service (WatchdogSec=).
The ping is also withheld when the engine thread has not ticked for a whole watchdog period
(at least ENGINE_STALL_MIN_S; it publishes about once a second), so a wedged engine is
restarted too instead of serving an ever-older state forever, and so is a daemon whose
supervisor gave up on a thread (``checks``: chronotickd/supervise.py ``healthy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from chronotickd.service.notify import Notifier

log = logging.getLogger("chronotickd.service")

ENGINE_STALL_MIN_S = 10.0  # the engine ticks about once a second; allow for slow refits


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for.

    Like sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid.
    """
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings systemd every ``interval`` seconds while the loop runs and the engine ticks."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        self.notifier = notifier
        self.interval = interval
        self.pings = 0
        self._last_tick = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._withheld = False
        self.checks: list[Callable[[], bool]] = []  # all must hold for a ping

    def tick(self, _facts: dict[str, Any] | None = None) -> None:
        """``Daemon.on_tick`` hook (engine thread): the engine is alive."""
        self._last_tick = time.monotonic()

    def start(self) -> None:
        """Start pinging; call from the event loop (``Daemon.on_ready``)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def engine_alive(self) -> bool:
        limit = max(2 * self.interval, ENGINE_STALL_MIN_S)
        return time.monotonic() - self._last_tick < limit

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                failing = [c for c in self.checks if not c()]
                if self.engine_alive() and not failing:
                    if self.notifier.notify("WATCHDOG=1"):
                        self.pings += 1
                    self._withheld = False
                elif not self._withheld and failing:
                    self._withheld = True
                    log.error("a worker thread could not be restarted; withholding the "
                              "watchdog ping so systemd restarts the service")
                elif not self._withheld:
                    self._withheld = True
                    log.error("engine thread has not published for %.0f s; withholding the "
                              "watchdog ping so systemd restarts the service",
                              time.monotonic() - self._last_tick)
                await asyncio.sleep(self.interval)
