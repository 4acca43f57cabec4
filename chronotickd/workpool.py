"""A small bounded pool for requests heavier than arithmetic (``at`` fits a local line).

The event loop must never run a multi-millisecond job while other clients wait, and a client
must not be able to queue unbounded work either: ``submit`` refuses (the caller answers
``busy``) once ``queue_size`` jobs wait, and once one uid holds ``per_uid`` of them. Jobs run
on worker threads; their results come back to the loop with ``call_soon_threadsafe``.

A pure-Python job holds the GIL; the loop thread asking for it waits up to
``sys.getswitchinterval()`` (5 ms by default), which would put every fit on some other
client's ``now`` latency. ``start`` lowers the interval to ``SWITCH_INTERVAL_S`` so the loop
gets the GIL back within a fraction of a millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("chronotickd.workpool")

SWITCH_INTERVAL_S = 50e-6

Job = tuple[int, Callable[[], Any], Callable[[Any, BaseException | None], None]]


class WorkPool:
    def __init__(self, queue_size: int = 16, workers: int = 1) -> None:
        self.queue_size = queue_size
        self.per_uid = max(1, queue_size // 8)  # one uid never fills much of the queue
        self.workers = workers
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._pending: dict[int, int] = {}  # uid → jobs queued or running (loop thread only)
        self.queued = 0
        self.done = 0
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = False
        # on the loop, per job: (uid, seconds it ran); the server charges it to the uid's share
        self.on_cost: Callable[[int, float], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, spawn: Callable[[str, Callable[[], None]],
                                                                    Any] | None = None) -> None:
        """Start the workers; ``spawn(name, target)`` (a supervisor) runs each, else a thread."""
        self._loop = loop
        self.running = True
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        for i in range(self.workers):
            name = f"workpool-{i}"
            if spawn is not None:
                spawn(name, self._work)
            else:
                threading.Thread(target=self._work, name=name, daemon=True).start()

    def stop(self) -> None:
        self.running = False
        for _ in range(self.workers):
            self._jobs.put(None)

    def submit(self, uid: int, fn: Callable[[], Any],
               done: Callable[[Any, BaseException | None], None]) -> bool:
        """Queue ``fn`` (from the loop thread); ``done(result, error)`` runs on the loop.
        False when the pool is full or ``uid`` holds its share: answer ``busy``."""
        if self.queued >= self.queue_size or self._pending.get(uid, 0) >= self.per_uid:
            self.refused += 1
            return False
        self.queued += 1
        self._pending[uid] = self._pending.get(uid, 0) + 1
        self._jobs.put((uid, fn, done))
        return True

    def _finish(self, uid: int, done: Callable[[Any, BaseException | None], None],
                result: Any, error: BaseException | None, seconds: float) -> None:  # on the loop
        if self.on_cost is not None:
            self.on_cost(uid, seconds)
        self.queued -= 1
        self.done += 1
        left = self._pending.get(uid, 1) - 1
        if left:
            self._pending[uid] = left
        else:
            self._pending.pop(uid, None)
        done(result, error)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            uid, fn, done = job
            result: Any = None
            error: BaseException | None = None
            began = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:  # reported to the request, not fatal to the worker
                error = exc
            seconds = time.perf_counter() - began
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._finish, uid, done, result, error, seconds)
                except RuntimeError:  # loop closed during shutdown
                    return

    def describe(self) -> dict[str, int]:
        return {"queued": self.queued, "done": self.done, "refused": self.refused,
                "queue_size": self.queue_size}
