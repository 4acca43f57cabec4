"""The client side (library + CLI) needs only the standard library and msgpack."""

from __future__ import annotations

import subprocess
import sys

from support import PYTHONPATH, REPO

BLOCK = r'''
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"numpy", "torch", "yaml", "ntplib", "chronotickd", "mcp",
                                  "chronos"}:
            raise ImportError(f"{name} must not be needed by the client")
        return None
sys.meta_path.insert(0, Block())
import chronotick_client, chronotick_client.cli
sys.exit(chronotick_client.cli.main(["--socket", sys.argv[1], "now"]))
'''


def test_client_runs_without_daemon_dependencies(tmp_path: object) -> None:
    r = subprocess.run([sys.executable, "-c", BLOCK, f"{tmp_path}/none.sock"],
                       capture_output=True, text=True, timeout=30, cwd=REPO,
                       env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 3, r.stderr  # daemon unavailable, not an ImportError
    assert "cannot reach chronotickd" in r.stderr
