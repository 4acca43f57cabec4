"""STATUS= lines for ``systemctl status``: warm-up progress and the current clock status.

The engine thread ticks about once a second; a line is sent only when its text changes
(progress is shown in whole percent), so systemd sees a handful of messages, not a stream.
"""

from __future__ import annotations

import threading
from typing import Any

from chronotickd.service.notify import Notifier


def status_line(facts: dict[str, Any]) -> str:
    """``warming up 40%: freerunning via ntp:…`` or ``synchronized via ntp:…``."""
    status = facts.get("status", "unknown")
    source = facts.get("source") or "none"
    text = f"{status} via {source}"
    progress = float(facts.get("warmup_progress", 1.0))
    if progress < 1.0:
        text = f"warming up {int(progress * 100)}%: {text}"
    return text


class StatusReporter:
    """``Daemon.on_tick`` hook sending STATUS= when the line changes."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.last = ""
        self.sent = 0
        self._lock = threading.Lock()

    def __call__(self, facts: dict[str, Any]) -> None:
        line = status_line(facts)
        with self._lock:
            if line == self.last:
                return
            self.last = line
        if self.notifier.notify(f"STATUS={line}"):
            self.sent += 1
