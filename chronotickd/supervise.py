"""Supervision of the daemon's worker threads (engine, work pool).

A thread whose target raises is logged with its traceback, counted and started again after a
short back-off: one bad measurement or a bug on a rare path must not leave the daemon
answering from a state nobody updates any more. A thread that dies ``max_deaths`` times
within ``window_s`` is given up on: ``healthy()`` turns False, which withholds the systemd
watchdog ping (chronotickd/service/watchdog.py) so systemd restarts the whole daemon, and
``status`` shows which thread and why. A target that returns normally has ended on purpose
(shutdown) and is not restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("chronotickd.supervise")


@dataclass
class _Worker:
    name: str
    target: Callable[[], None]
    thread: threading.Thread | None = None
    restarts: int = 0
    deaths: deque[float] = field(default_factory=deque)
    last_error: str = ""
    given_up: bool = False
    ended: bool = False


class Supervisor:
    def __init__(self, max_deaths: int = 5, window_s: float = 60.0,
                 backoff_s: float = 0.5) -> None:
        self.max_deaths = max_deaths
        self.window_s = window_s
        self.backoff_s = backoff_s
        self._workers: dict[str, _Worker] = {}
        self._stopping = threading.Event()

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Run ``target`` in a daemon thread called ``name``, restarted when it raises."""
        worker = self._workers[name] = _Worker(name, target)
        worker.thread = threading.Thread(target=self._run, args=(worker,), name=name,
                                         daemon=True)
        worker.thread.start()
        return worker.thread

    def _run(self, w: _Worker) -> None:
        while not self._stopping.is_set():
            try:
                w.target()
                w.ended = True
                return
            except Exception as exc:
                now = time.monotonic()
                w.deaths.append(now)
                while w.deaths and now - w.deaths[0] > self.window_s:
                    w.deaths.popleft()
                w.last_error = f"{type(exc).__name__}: {exc}"[:200]
                if len(w.deaths) >= self.max_deaths:
                    w.given_up = True
                    log.critical("thread %s died %d times in %.0f s (last: %s); not restarting "
                                 "it: the watchdog ping is withheld so the service manager "
                                 "restarts chronotickd", w.name, len(w.deaths), self.window_s,
                                 w.last_error, exc_info=True)
                    return
                w.restarts += 1
                log.error("thread %s died (%s); restarting it (restart %d)", w.name,
                          w.last_error, w.restarts, exc_info=True)
            if self._stopping.wait(self.backoff_s * min(8, len(w.deaths))):
                return

    def stop(self) -> None:
        self._stopping.set()

    def join(self, name: str, timeout: float) -> None:
        w = self._workers.get(name)
        if w is not None and w.thread is not None:
            w.thread.join(timeout)

    def healthy(self) -> bool:
        """False once any thread was given up on (the watchdog check)."""
        return not any(w.given_up for w in self._workers.values())

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per thread: alive, restarts, given_up, last_error (for `status`)."""
        return {w.name: {"alive": bool(w.thread and w.thread.is_alive()) and not w.ended,
                         "restarts": w.restarts, "given_up": w.given_up,
                         "last_error": w.last_error or None}
                for w in self._workers.values()}
