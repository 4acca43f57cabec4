"""Atomic persistence of the drift estimate (chrony's driftfile, as JSON).

Format 2 (the MONOTONIC_RAW time base, chronotickd/core/timebase.py): the estimate (θ at raw
time ``raw`` against ``epoch``, frequency, uncertainties) plus the clocks when it was saved
(``saved_raw``, ``saved_real``) and the kernel's ``boot_id``. raw restarts at each boot, so the
saved offset is only meaningful in the same boot (``same_boot``); after a reboot only the
frequency is worth keeping. A file of another format, without the writer's mark, or with
anything missing or non-finite is ignored with one log line, never served.

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
from typing import Any

log = logging.getLogger("chronotickd.state")

STATE_FILE = "drift.json"
FORMAT_VERSION = 2
WRITER = "chronotickd"
REQUIRED = ("raw", "epoch", "offset", "freq", "offset_stddev", "freq_stddev", "systematic",
            "saved_raw", "saved_real")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_ENV = "CHRONOTICK_BOOT_ID_FILE"  # the clock rig simulates reboots with it
# systemd's %b specifier: the unit sets CHRONOTICK_BOOT_ID=%b because its sandbox
# (ProcSubset=pid) hides /proc/sys, where the kernel publishes boot_id.
BOOT_ID_VALUE_ENV = "CHRONOTICK_BOOT_ID"
STATE_DIR_MODE = 0o750  # created no wider than this (umask may narrow it); tmpfiles.d agrees
MAX_STATE_BYTES = 65536  # the file is ~200 bytes; anything much larger is not ours


def boot_id() -> str:
    """This boot's id, normalized to 32 lower-case hex digits; '' when unknown.

    Read from the kernel's ``/proc/sys/kernel/random/boot_id`` (``$CHRONOTICK_BOOT_ID_FILE``
    overrides the path); when that is hidden, as under the shipped unit's ``ProcSubset=pid``,
    from ``$CHRONOTICK_BOOT_ID``, which the unit fills with systemd's ``%b`` (the same id,
    without dashes). Without either a restart is treated as a reboot: frequency only.
    """
    path = os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE
    try:
        return normalize_boot_id(Path(path).read_text())
    except OSError:
        if os.environ.get(BOOT_ID_ENV):
            return ""  # an explicit file that cannot be read is not replaced by a guess
        return normalize_boot_id(os.environ.get(BOOT_ID_VALUE_ENV, ""))


def normalize_boot_id(text: str) -> str:
    """'0f1e-…' (the kernel's form) and '0f1e…' (systemd's %b) compare equal."""
    return text.strip().replace("-", "").lower()


def record(estimate: dict[str, float], raw: float, real: float) -> dict[str, Any]:
    """What ``save`` writes: the engine's estimate, the clocks now and the boot."""
    return {**estimate, "saved_raw": raw, "saved_real": real, "boot_id": boot_id()}


def same_boot(saved: dict[str, Any], raw_now: float) -> bool:
    """Was ``saved`` written in this boot? (same boot_id, and raw has not gone back)."""
    current = boot_id()
    return bool(current) and normalize_boot_id(str(saved.get("boot_id", ""))) == current and \
        float(saved["saved_raw"]) <= raw_now


def save(state_dir: str | Path, data: dict[str, Any]) -> Path:
    directory = Path(state_dir)
    directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    target = directory / STATE_FILE
    fd, tmp = tempfile.mkstemp(prefix=".drift-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"format": FORMAT_VERSION, "writer": WRITER, **data}, fh)
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


def load(state_dir: str | Path) -> dict[str, Any] | None:
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
        if not isinstance(raw, dict) or raw.get("writer", WRITER if "format" in raw else None) \
                != WRITER:
            raise ValueError("not a chronotickd state file")
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {raw.get('format')!r} (older chronotickd?), expected "
                             f"{FORMAT_VERSION}")
        data: dict[str, Any] = {k: float(raw[k]) for k in REQUIRED}
        if not all(math.isfinite(v) for v in data.values()):
            raise ValueError("non-finite value")
        if not isinstance(raw.get("boot_id"), str):
            raise ValueError("no boot_id")
        data["boot_id"] = raw["boot_id"]
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        log.warning("ignoring state file %s (%s); starting without a saved estimate", path, exc)
        return None
    return data
