from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "clients", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from support import CHRONYD, Chronyd, chronyd_server  # noqa: E402


@pytest.fixture(scope="session")
def chronyd() -> Iterator[Chronyd]:
    """A real chronyd on loopback, shared by the session (clock never adjusted: -x)."""
    if CHRONYD is None:
        pytest.skip("chronyd not installed (make test installs it as root: apt-get install chrony)")
    if os.geteuid() != 0:
        pytest.skip("chronyd needs root here")
    with chronyd_server() as server:
        yield server
