"""Atomic hand-over of state from the workers (engine, sources, models) to the server.

Writers build a new immutable ``Published`` and swap the reference; readers take the
reference once per request. A Python attribute assignment is atomic, so no lock is held on
the query path and a reader never sees half an update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from chronotickd.core.state import ClockState


@dataclass(frozen=True, slots=True)
class Published:
    clock: ClockState
    status: dict[str, Any] = field(default_factory=dict)  # daemon-level facts for `status`
    sources: tuple[dict[str, Any], ...] = ()  # per-source rows for `sources`


class Publisher:
    def __init__(self, clock: ClockState) -> None:
        self.current = Published(clock)
        # called with each new view, in the publishing thread (e.g. the shared-memory writer);
        # a hook must be quick and must not raise
        self.hooks: list[Callable[[Published], None]] = []

    def publish(self, **changes: Any) -> None:
        """Replace some fields of the published view in one atomic step."""
        self.current = replace(self.current, **changes)
        for hook in self.hooks:
            hook(self.current)
