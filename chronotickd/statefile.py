"""Atomic persistence of the drift estimate (chrony's driftfile, as JSON).

Written to a temporary file in the same directory, fsynced, then renamed over the old one:
a crash or SIGKILL leaves either the old file or the new one, never a torn mix. A file that
cannot be parsed is reported and ignored (the daemon starts cold), never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path

log = logging.getLogger("chronotickd.state")

STATE_FILE = "drift.json"
FORMAT_VERSION = 1
STATE_DIR_MODE = 0o750  # created no wider than this (umask may narrow it); tmpfiles.d agrees
MAX_STATE_BYTES = 65536  # the file is ~200 bytes; anything much larger is not ours
REQUIRED = ("t", "offset", "freq", "offset_stddev", "freq_stddev", "systematic")


def save(state_dir: str | Path, data: dict[str, float]) -> Path:
    directory = Path(state_dir)
    directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    target = directory / STATE_FILE
    fd, tmp = tempfile.mkstemp(prefix=".drift-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"format": FORMAT_VERSION, **data}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_leftovers(state_dir: str | Path) -> int:
    """Delete temporary files of writers that were killed mid-save; returns how many."""
    n = 0
    for tmp in Path(state_dir).glob(".drift-*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            n += 1
    return n


def load(state_dir: str | Path) -> dict[str, float] | None:
    """The saved estimate, or None (missing, unreadable or corrupt: logged once).

    Called once at start, before any writer runs, so it also clears half-written temporaries.
    """
    path = Path(state_dir) / STATE_FILE
    remove_leftovers(state_dir)
    try:
        with path.open("rb") as fh:
            text = fh.read(MAX_STATE_BYTES + 1)
        if len(text) > MAX_STATE_BYTES:
            raise ValueError(f"over {MAX_STATE_BYTES} bytes, not a state file")
        raw = json.loads(text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # fuzzing found deep nesting
        log.warning("ignoring state file %s (%s); starting without a saved estimate", path, exc)
        return None
    try:
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT_VERSION}")
        data = {k: float(raw[k]) for k in REQUIRED}
        if not all(math.isfinite(v) for v in data.values()):
            raise ValueError("non-finite value")
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        log.warning("ignoring state file %s (%s); starting without a saved estimate", path, exc)
        return None
    return data
