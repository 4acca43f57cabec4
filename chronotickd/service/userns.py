"""Which group ids exist in our user namespace (systemd's ``PrivateUsers=yes``).

Under ``PrivateUsers=yes`` only root, the service's own user and group (and nobody) are
mapped; SO_PEERCRED reports every other uid or gid as the overflow id 65534. An
``admin_group`` outside the map can therefore never match a client: say so at start and
reload instead of refusing its members without a word.
"""

from __future__ import annotations

from pathlib import Path

GID_MAP = Path("/proc/self/gid_map")


def gid_mapped(gid: int, gid_map: Path = GID_MAP) -> bool:
    """True when ``gid`` is visible in this process's user namespace (or it cannot be told)."""
    try:
        lines = gid_map.read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            inside, _, count = map(int, parts)
            if inside <= gid < inside + count:
                return True
    return False
