"""Admin requests (reload, poll_now, reset): root or admin_group only, checked with SO_PEERCRED.

Queries stay open to every local user (socket_mode 0666). The unprivileged peers are real
processes running as other uids (``setpriv``), talking to a real daemon over its socket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import PYTHONPATH, REPO, daemon_process, wait_for

from chronotick_client import Client, RequestFailed

SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                                reason="needs root and setpriv to act as other uids")

ASK = """
import json, sys
from chronotick_client import Client, RequestFailed
c = Client(sys.argv[1])
try:
    r = c.call(sys.argv[2])
    print(json.dumps({"ok": True, "result": r}))
except RequestFailed as e:
    print(json.dumps({"ok": False, "code": e.code, "message": str(e)}))
"""


def ask_as(sock: str, op: str, uid: int, gid: int, groups: list[int] | None = None) -> dict:
    """Run one request from a process with the given uid/gid/supplementary groups."""
    grp_arg = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    cmd = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", *grp_arg,
           sys.executable, "-c", ASK, sock, op]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd="/",
                         env={"PYTHONPATH": PYTHONPATH, "PATH": os.environ.get("PATH", "")})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work dir others may traverse (0711) but not list, so the 0666 socket is reachable."""
    work = Path(tempfile.mkdtemp(prefix="ct-admin-"))
    os.chmod(work, 0o711)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wait_until(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    return wait_for(fn, timeout)


def test_queries_open_admin_forbidden_for_others(workdir: Path) -> None:
    with daemon_process(workdir) as d:
        r = ask_as(d.socket, "now", 65534, 65534)
        assert r["ok"] and r["result"]["bound_ns"] > 0
        for op in ("reload", "poll_now", "reset"):
            r = ask_as(d.socket, op, 65534, 65534)
            assert not r["ok"] and r["code"] == "forbidden", r
            assert "admin_group" in r["message"] and "uid 65534" in r["message"]
        with Client(d.socket) as c:  # root may
            assert c.call("poll_now") == {"polled": []}


def test_admin_group_membership(workdir: Path) -> None:
    """Primary or supplementary membership of admin_group grants admin; other uids do not."""
    with daemon_process(workdir, admin_group="nogroup") as d:
        assert ask_as(d.socket, "poll_now", 65534, 65534)["ok"]  # primary group nogroup
        assert ask_as(d.socket, "poll_now", 1, 1, groups=[65534])["ok"]  # supplementary
        r = ask_as(d.socket, "poll_now", 1, 1)
        assert r["code"] == "forbidden"
        assert ask_as(d.socket, "status", 1, 1)["ok"]


def test_reload_applies_live_keys_and_rejects_bad_config(workdir: Path) -> None:
    with daemon_process(workdir) as d, Client(d.socket) as c:
        wait_until(lambda: "socket" in c.status())  # first publish done
        cfg = yaml.safe_load(d.config.read_text())
        cfg["log_level"] = "debug"
        cfg["server"] = {"max_connections": 3, "uid_connection_share": 1.0}
        cfg["socket"] = str(workdir / "other.sock")
        d.config.write_text(yaml.safe_dump(cfg))
        r = c.call("reload")
        assert r["applied"] == ["log_level", "server.max_connections",
                                "server.uid_connection_share"]
        assert r["restart_required"] == ["socket"]
        time.sleep(1.2)  # next publish
        assert c.status()["socket"] == d.socket  # still the one it listens on
        # the new connection cap is in force: 3 held, the 4th is busy
        held = [Client(d.socket) for _ in range(2)]
        for h in held:
            h.now()
        with pytest.raises(RequestFailed, match="busy"):
            Client(d.socket).now()
        for h in held:
            h.close()
        d.config.write_text("ntp: {servers: 5}\n")
        with pytest.raises(RequestFailed) as exc:
            c.call("reload")
        assert exc.value.code == "config_error" and "unchanged" in str(exc.value)
        assert c.now()["bound_ns"] > 0
        assert d.log().count("reloaded") == 1


def test_reload_restarts_ptp_and_model_and_sighup_reloads(workdir: Path) -> None:
    """ptp.* and model.* changes restart that component (reported applied only because
    they are); SIGHUP — systemd's ExecReload — re-reads the file like the admin request."""
    with daemon_process(workdir) as d, Client(d.socket) as c:
        wait_until(lambda: "socket" in c.status())
        assert c.status()["models"] == {} and c.call("sources")["sources"] == []
        cfg = yaml.safe_load(d.config.read_text())
        cfg["ptp"] = {"enabled": True, "pmc_path": "/nonexistent/pmc", "uds": str(workdir / "p")}
        cfg["model"] = {"enabled": True, "source": str(workdir / "no-model")}
        d.config.write_text(yaml.safe_dump(cfg))
        r = c.call("reload")
        assert r["applied"] == ["model.enabled", "model.source", "ptp.enabled",
                                "ptp.pmc_path", "ptp.uds"]
        assert r["restart_required"] == []
        kinds = lambda: [s["kind"] for s in c.call("sources")["sources"]]  # noqa: E731
        wait_until(lambda: kinds() == ["ptp"])  # the PTP source runs now
        models = wait_until(lambda: c.status()["models"])  # so does the forecaster
        assert models["short"]["source"] == str(workdir / "no-model")
        cfg["ptp"]["enabled"] = False
        cfg["model"]["enabled"] = False
        cfg["log_level"] = "debug"
        d.config.write_text(yaml.safe_dump(cfg))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "applied log_level, model.enabled, ptp.enabled" in d.log())
        wait_until(lambda: kinds() == [] and c.status()["models"] == {})
        d.config.write_text("ntp: {servers: 5}\n")  # a bad file on SIGHUP: logged, kept
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload on SIGHUP failed" in d.log())
        assert d.proc.poll() is None and c.now()["bound_ns"] > 0


def test_poll_now_and_reset(workdir: Path, chronyd) -> None:  # type: ignore[no-untyped-def]
    """Long poll interval: only poll_now brings samples; reset forgets them and the file."""
    with daemon_process(workdir, ntp__servers=[chronyd.server], ntp__burst=1,
                        ntp__minpoll_s=600, ntp__maxpoll_s=600) as d, Client(d.socket) as c:
        wait_until(lambda: c.status().get("measurements") == 1)
        for n in (2, 3):
            assert c.call("poll_now") == {"polled": ["ntp"]}
            wait_until(lambda n=n: c.status().get("measurements") == n)
        wait_until(lambda: c.status()["status"] == "synchronized")
        state = workdir / "state" / "drift.json"
        state.parent.mkdir(exist_ok=True)
        state.write_text("{}")
        assert c.call("reset")["reset"] == "scheduled"
        st = wait_until(lambda: (s := c.status())["measurements"] == 0 and s)
        assert st["status"] == "unsynchronized"
        assert c.now()["bound_ns"] >= 1000  # the kernel's maxerror, not a fit's
        assert not state.exists()
        assert d.log().count("state reset by an admin request") == 1


def test_socket_reachable_for_others(workdir: Path) -> None:
    """socket_mode 0660 with no group access: another uid cannot even connect."""
    with daemon_process(workdir, socket_mode="0600") as d:
        cmd = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
               "-m", "chronotick_client", "--socket", d.socket, "now"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO,
                             env={"PYTHONPATH": PYTHONPATH, "PATH": os.environ["PATH"]})
        assert out.returncode == 3 and "Permission denied" in out.stderr




def test_reload_swaps_ntp_servers(workdir: Path) -> None:
    """ntp.* applies live: the NTP source is rebuilt with the new server list."""
    from ntp_responder import responder

    with responder(0.0) as a, responder(0.0) as b, \
            daemon_process(workdir, ntp__servers=[a.server], ntp__minpoll_s=0.5) as d, \
            Client(d.socket) as c:
        wait_until(lambda: a.requests >= 2)
        cfg = yaml.safe_load(d.config.read_text())
        cfg["ntp"]["servers"] = [b.server]
        d.config.write_text(yaml.safe_dump(cfg))
        assert c.call("reload")["applied"] == ["ntp.servers"]
        wait_until(lambda: b.requests >= 2)
        names = wait_until(lambda: (n := [s["name"] for s in c.sources()["sources"]
                                          if s.get("kind") == "ntp" and "polls" in s])
                           and n[0] == f"ntp:{b.server}" and n)
        assert names == [f"ntp:{b.server}"]
        before = a.requests
        time.sleep(1.0)
        assert a.requests == before  # the old source is stopped
