"""The engine as it was before issue 13 ("engine-v1"): the yardstick the bench compares with.

Main's engine (robust line fits over candidate windows, the one with the best one-poll-ahead
error served; steps confirmed by ``step_confirm`` agreeing outliers at every poll interval) is
the shipped ``Engine`` with the issue-13 features switched off (``EngineConfig.v1()``), so the
baseline runs the very same code path as the daemon did, on the same time base. Changing a
default of ``EngineConfig`` must not move this baseline: ``v1()`` pins every knob it reads.
"""

from __future__ import annotations

from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.replay.methods import EngineMethod


class EngineV1Method(EngineMethod):
    name = "engine-v1"

    def __init__(self) -> None:
        super().__init__(Engine(EngineConfig.v1()))
