"""W^X: what the daemon runs works without writable+executable memory.

The shipped unit sets ``MemoryDenyWriteExecute=yes``. That is only honest if the code paths
that might need W+X memory (cffi callbacks in the TLS stack for NTS, torch's CPU kernels for
the forecaster) really do without it. Each check runs in a child process that first turns on
the kernel's own equivalent, ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` (Linux ≥ 6.3),
and proves it is in force by failing to map W+X memory.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from support import REPO, chronyd_server

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

PRELUDE = f"""
import ctypes, mmap, sys
if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):
    sys.exit("PR_SET_MDWE refused")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X memory was mapped: MDWE is not in force")
except OSError:
    pass
"""


def mdwe_supported() -> bool:
    probe = subprocess.run([sys.executable, "-c", PRELUDE], capture_output=True, text=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not mdwe_supported(),
                                reason="needs Linux ≥ 6.3 (PR_SET_MDWE)")


def run_under_mdwe(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "clients"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True,
                          text=True, env=env, timeout=300)


def test_mdwe_is_really_enforced_in_the_child() -> None:
    """The guard itself: the same child code is refused W+X memory (else the checks below
    would pass for the wrong reason)."""
    res = run_under_mdwe("print('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert ctypes.CDLL(None).prctl  # the parent is untouched: it never called prctl


@pytest.fixture(scope="module")
def ntsd() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("chronyd needs root here")
    pytest.importorskip("OpenSSL", reason="the nts extra is not installed")
    with chronyd_server(nts=True) as c:
        yield c


def test_nts_key_exchange_without_wx_memory(ntsd: Any) -> None:
    """A Python certificate-verify callback (a cffi closure) needs W+X memory; the NTS client
    must not use one."""
    res = run_under_mdwe(
        "from chronotickd.sources import nts\n"
        f"keys = nts.key_exchange('127.0.0.1', {ntsd.nts_port}, {ntsd.port}, 5.0,"
        f" trusted_ca={str(ntsd.cert)!r})\n"
        "print(len(keys.cookies))\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout.strip()) > 0


def test_forecaster_inference_without_wx_memory() -> None:
    pytest.importorskip("torch", reason="the chronos extra is not installed")
    pytest.importorskip("chronos", reason="the chronos extra is not installed")
    res = run_under_mdwe(
        "import torch\n"
        "from chronotickd.forecast import loader\n"
        "pipe = loader.load_pipeline(None, threads=1)\n"
        "q, mean = pipe.predict_quantiles(torch.randn(1, 256), prediction_length=16,"
        " quantile_levels=[0.1, 0.5, 0.9])\n"
        "print(tuple(q.shape))\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "(1, 16, 3)"
