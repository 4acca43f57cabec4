"""Where the real trace lives: ``<repo>/../shared/data/synced_tacc.csv`` or $CHRONOTICK_DATA."""

from __future__ import annotations

import os
from pathlib import Path

TRACE_NAME = "synced_tacc.csv"


def real_trace_path() -> Path:
    """The recorded trace; CHRONOTICK_DATA may name the file or the directory holding it."""
    env = os.environ.get("CHRONOTICK_DATA")
    if env:
        p = Path(env)
        return p / TRACE_NAME if p.is_dir() else p
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / TRACE_NAME
