"""The shipped units under a real systemd: a booted Debian 12 container, the .deb installed.

``make deb`` builds the package; a Debian 12 rootfs (mmdebstrap, cached under
/var/cache/chronotick-test/) boots with systemd as PID 1 in ``systemd-nspawn`` with no
network (tests/container.py); the package goes in with ``apt-get install ./…deb`` as a user
would, and every check uses the container's own ``systemctl``/``journalctl``. A chronyd in
the container (``-x``: it never touches a clock) serves NTP on loopback.

The tests run in file order against one container (module fixture); each names the
behaviour it needs. ``-s`` prints the timings and the exposure score.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml
from container import Container, missing_tools
from support import REPO, host_clock_discipline

pytestmark = [
    pytest.mark.root, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (systemd-nspawn, nsenter)"),
    pytest.mark.skipif(bool(missing_tools()), reason=f"missing {missing_tools()} "
                       "(make system-deps installs systemd-container, mmdebstrap, zstd)"),
    pytest.mark.timeout(900),
]

UNIT = "chronotickd.service"
CONF = "/etc/chronotick/chronotick.yaml"
DROPIN = "/etc/systemd/system/chronotickd.service.d"
NTP_PORT = 11123
EXPOSURE_LIMIT = 1.5
CHRONY_CONF = f"""port {NTP_PORT}
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 1
cmdport 0
pidfile /run/ct-chronyd.pid
driftfile /run/ct-chronyd.drift
"""
ASK = """import json, sys
from chronotick_client import Client, RequestFailed
try:
    print(json.dumps({"ok": True, "result": Client().call(sys.argv[1])}))
except RequestFailed as e:
    print(json.dumps({"ok": False, "code": e.code, "message": str(e)}))
"""
TIMINGS: dict[str, float] = {}


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    before = host_clock_discipline()
    t0 = time.monotonic()
    dist = tmp_path_factory.mktemp("dist")
    # The package builds while the rootfs is extracted and booted (CHRONOTICK_TEST_DEB: use
    # that .deb instead, to iterate on the checks).
    given = os.environ.get("CHRONOTICK_TEST_DEB")
    cmd = ["cp", given, str(dist)] if given else ["make", "-s", "deb", f"DIST={dist}"]
    build = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env={**os.environ, "DIST": str(dist)})
    c = Container()
    try:
        c.boot()
        TIMINGS["boot (incl. rootfs extract)"] = time.monotonic() - t0
        out, _ = build.communicate(timeout=600)
        assert build.returncode == 0, f"make deb failed:\n{out[-3000:]}"
        debs = list(dist.glob("*.deb"))
        assert len(debs) == 1, out
        TIMINGS["make deb (parallel)"] = time.monotonic() - t0
        c.copy_in(debs[0], f"/root/{debs[0].name}")
        c.deb = debs[0].name  # type: ignore[attr-defined]
        c.write("/etc/chronotick-test/chrony.conf", CHRONY_CONF)
        c.sh("systemd-run --quiet --unit=ct-chronyd chronyd -x -d -u root "
             "-f /etc/chronotick-test/chrony.conf")
        yield c
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        c.close()
        TIMINGS["total"] = time.monotonic() - t0
        print("\ncontainer test timings: " + ", ".join(
            f"{k} {v:.1f}" + ("" if k == "exposure" else " s") for k, v in TIMINGS.items()))
        assert host_clock_discipline()[1:] == before[1:], "the host clock discipline changed"


# -- helpers ----------------------------------------------------------------------------------
def show(c: Container, prop: str, unit: str = UNIT) -> str:
    return c.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()


def wait(fn, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.2)


def when(value, test):  # type: ignore[no-untyped-def]
    return value if test(value) else None


def restart(c: Container) -> None:
    """`systemctl restart`, for the checks that restart on purpose: systemd allows 5 starts
    in 10 s (then the unit, and with it chronotickd.socket, fail); several checks in a row
    on a fast machine can reach that, so the count is reset first (the start limit itself is
    what test_config_error_under_socket_activation_does_not_loop is about)."""
    c.sh(f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")


def set_config(c: Container, **changes: object) -> None:
    cfg = yaml.safe_load(c.sh(f"cat {CONF}").stdout) or {}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    c.write(CONF, yaml.safe_dump(cfg))


def now_json(c: Container, user: str | None = None) -> dict:
    r = c.sh("chronotick-cli --timeout 10 --json now", user=user)
    return json.loads(r.stdout)


def journal(c: Container, invocation: bool = False, since: str | None = None) -> str:
    sel = f"_SYSTEMD_INVOCATION_ID={show(c, 'InvocationID')}" if invocation else f"-u {UNIT}"
    after = f" --after-cursor='{since}'" if since else ""
    return c.sh(f"journalctl --no-pager -o cat {sel}{after}", check=False).stdout


def cursor(c: Container) -> str:
    out = c.sh("journalctl -n 1 -o json --no-pager", check=False).stdout.strip()
    return json.loads(out.splitlines()[-1])["__CURSOR"] if out else ""


def ask(c: Container, op: str, user: str | None = None) -> dict:
    r = c.sh(f"/opt/chronotick/bin/python -c '{ASK}' {op}", user=user)
    return json.loads(r.stdout)


def nrestarts(c: Container) -> int:
    return int(show(c, "NRestarts"))


# -- the checks -------------------------------------------------------------------------------
def test_apt_install_the_deb_offline(box: Container) -> None:
    """`apt-get install ./chronotick_*.deb` with no network: user, units, socket listening."""
    c = box
    c.sh("ip -o link show | grep -v ' lo:' && exit 1 || true")  # no network but loopback
    t = time.monotonic()
    c.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
         f"/root/{c.deb}", timeout=180)  # type: ignore[attr-defined]
    TIMINGS["apt-get install"] = time.monotonic() - t
    assert c.sh("getent passwd chronotick").stdout.split(":")[5] == "/var/lib/chronotick"
    assert c.sh("systemctl is-enabled chronotickd.socket chronotickd.service").stdout.split() \
        == ["enabled", "enabled"]
    assert show(c, "ActiveState", "chronotickd.socket") == "active"
    assert c.sh("readlink /usr/bin/chronotickd").stdout.strip() == \
        "/opt/chronotick/bin/chronotickd"
    assert "chronotick.yaml" in c.sh("dpkg-query --showformat='${Conffiles}' -W chronotick"
                                     ).stdout
    # the test's own settings: the loopback chronyd, fast warm-up; a short watchdog and
    # start timeout so that their checks take seconds (drop-in, as an admin would)
    set_config(c, ntp={"servers": [f"127.0.0.1:{NTP_PORT}"], "burst_interval_s": 0.5,
                       "minpoll_s": 2, "maxpoll_s": 2, "timeout_s": 0.5})
    c.write(f"{DROPIN}/test.conf", "[Service]\nWatchdogSec=3s\nTimeoutStartSec=20s\n")
    c.sh("systemctl daemon-reload")


def test_start_reaches_active_through_notify(box: Container) -> None:
    c = box
    t = time.monotonic()
    c.sh(f"systemctl start {UNIT}", timeout=60)
    TIMINGS["systemctl start"] = time.monotonic() - t
    assert show(c, "ActiveState") == "active"
    assert show(c, "Type") == "notify"
    assert show(c, "StatusText")  # STATUS= lines from the daemon itself
    pid = int(show(c, "MainPID"))
    assert c.sh(f"cat /proc/{pid}/comm").stdout.strip().startswith(("chronotickd", "python"))
    assert c.sh(f"ps -o user= -p {pid}").stdout.strip() == "chronotick"


def test_cli_now_answers_against_chronyd_in_the_container(box: Container) -> None:
    c = box
    ans = wait(lambda: when(now_json(c), lambda a: a["status"] == "synchronized"),
               30, "status synchronized via the container's chronyd")
    assert ans["earliest_ns"] <= ans["latest_ns"] and ans["source"] == "ntp"
    rows = json.loads(c.sh("chronotick-cli --json sources").stdout)["sources"]
    assert [r["name"] for r in rows] == [f"ntp:127.0.0.1:{NTP_PORT}"], rows


def test_shm_segment_answers_under_the_sandbox(box: Container) -> None:
    """The segment is made inside the unit's sandbox (UMask=0077, W^X) with the socket's read
    permissions, and `now --shm` answers from it alone, as an unprivileged user."""
    c = box
    assert c.sh("stat -c '%U %a' /run/chronotick/shm0").stdout.split() == ["chronotick", "644"]
    out = c.sh("runuser -u nobody -- chronotick-cli now --shm --json").stdout
    ans = json.loads(out)
    assert ans["status"] == "synchronized" and ans["earliest_ns"] <= ans["latest_ns"], ans


def test_socket_activation_starts_a_stopped_service(box: Container) -> None:
    c = box
    c.sh(f"systemctl stop {UNIT}")
    assert show(c, "ActiveState") == "inactive"
    assert show(c, "ActiveState", "chronotickd.socket") == "active"
    t = time.monotonic()
    assert now_json(c)["bound_ns"] > 0  # the connection itself starts the service
    TIMINGS["socket activation → answer"] = time.monotonic() - t
    assert show(c, "ActiveState") == "active"
    assert "using the listening socket passed in" in journal(c, invocation=True)


def test_watchdog_restarts_a_hung_daemon(box: Container) -> None:
    c = box
    assert show(c, "WatchdogUSec") == "3s"
    before, pid = nrestarts(c), show(c, "MainPID")
    time.sleep(4.5)  # longer than WatchdogSec: the pings keep it alive
    assert nrestarts(c) == before and show(c, "MainPID") == pid
    # MainPID 0 (not running) would make this `kill -STOP 0`: the caller's whole process
    # group, which through nsenter includes pytest itself
    assert pid.isdigit() and int(pid) > 1, f"no daemon to stop (MainPID {pid!r})"
    c.sh(f"kill -STOP {pid}")
    t = time.monotonic()
    wait(lambda: nrestarts(c) == before + 1 and show(c, "ActiveState") == "active"
         and show(c, "MainPID") not in ("0", pid), 30, "watchdog restart")
    TIMINGS["SIGSTOP → restarted (WatchdogSec=3)"] = time.monotonic() - t
    assert "Watchdog timeout" in c.sh(f"journalctl --no-pager -u {UNIT} -o cat").stdout


def test_systemctl_reload_applies_a_config_change(box: Container) -> None:
    c = box
    pid = show(c, "MainPID")
    set_config(c, log_level="debug", server={"max_connections": 7})
    cur = cursor(c)
    c.sh(f"systemctl reload {UNIT}")
    line = wait(lambda: re.search(r"reloaded: applied (.*)", journal(c, since=cur)), 15,
                "the reload's log line")
    assert line.group(1).startswith("log_level, server.max_connections"), line.group(0)
    assert show(c, "MainPID") == pid and show(c, "ActiveState") == "active"
    set_config(c, socket="/run/chronotick/other.sock")  # not live: reported, not claimed
    cur = cursor(c)
    c.sh(f"systemctl reload {UNIT}")
    assert wait(lambda: "needs a restart: socket" in journal(c, since=cur), 15)
    set_config(c, log_level="info", socket="/run/chronotick/chronotick.sock")
    c.sh(f"systemctl reload {UNIT}")


def test_kill_9_is_restarted(box: Container) -> None:
    c = box
    before, pid = nrestarts(c), show(c, "MainPID")
    assert pid.isdigit() and int(pid) > 1, f"no daemon to kill (MainPID {pid!r})"
    c.sh(f"kill -9 {pid}")
    wait(lambda: nrestarts(c) == before + 1 and show(c, "ActiveState") == "active"
         and show(c, "MainPID") not in ("0", pid), 20, "restart after SIGKILL")
    assert now_json(c)["bound_ns"] > 0


def test_state_survives_systemctl_restart(box: Container) -> None:
    c = box
    wait(lambda: now_json(c)["status"] == "synchronized", 30, "synchronized")
    restart(c)
    assert c.sh("stat -c '%U %a' /var/lib/chronotick/drift.json").stdout.split()[0] \
        == "chronotick"
    # Same boot: offset and frequency come back. ProcSubset=pid hides the kernel's boot_id
    # file, so this holds only because the unit passes systemd's %b (CHRONOTICK_BOOT_ID).
    log = journal(c, invocation=True)
    assert "restored the estimate" in log, log


def test_journald_has_structured_fields(box: Container) -> None:
    c = box
    out = c.sh(f"journalctl --no-pager -u {UNIT} -o json").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    ready = [e for e in entries if "CHRONOTICK_STARTUP_S" in e]
    assert ready, "no entry with CHRONOTICK_STARTUP_S"
    e = ready[-1]
    assert e["CHRONOTICK_SOCKET"] == "/run/chronotick/chronotick.sock"
    assert e["PRIORITY"] == "6" and e.get("CODE_FILE", "").endswith(".py")
    assert e["_SYSTEMD_UNIT"] == UNIT and e["_UID"] == c.sh("id -u chronotick").stdout.strip()


def test_security_exposure_on_the_real_system(box: Container) -> None:
    c = box
    out = c.sh(f"systemd-analyze security --no-pager {UNIT}", check=False).stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m, out[-2000:]
    score = float(m.group(1))
    TIMINGS["exposure"] = score
    print(f"\nsystemd-analyze security (real systemd): {score}")
    assert score <= EXPOSURE_LIMIT


def test_private_dev_holds_the_ptp_clocks_and_nothing_else(box: Container) -> None:
    """PrivateDevices=yes hides the host's devices; the PHCs are bound in by name.

    No PHC exists here, so a plain file stands in for /dev/ptp0 (the bind does not care what
    it binds); another stand-in shows that the rest of /dev is not the host's.
    """
    c = box
    c.sh("touch /dev/ptp0 /dev/not-for-chronotick")
    try:
        restart(c)
        pid = show(c, "MainPID")
        assert pid.isdigit() and int(pid) > 1, f"no daemon (MainPID {pid!r})"
        inside = c.sh(f"nsenter -t {pid} -m ls /dev").stdout.split()
        assert "ptp0" in inside and "null" in inside, inside
        assert "not-for-chronotick" not in inside and "ptp1" not in inside, inside
    finally:
        c.sh("rm -f /dev/ptp0 /dev/not-for-chronotick")
        restart(c)


def test_admin_requests_from_admin_group_with_private_users(box: Container) -> None:
    """PrivateUsers=yes shows other users as 65534; the service's own group stays visible,
    so admin_group: chronotick admits its members; any other group is warned about."""
    c = box
    c.sh("id alice >/dev/null 2>&1 || useradd -M -G chronotick alice; "
         "id bob >/dev/null 2>&1 || useradd -M bob; "
         "getent group ct-admins >/dev/null || groupadd ct-admins; usermod -aG ct-admins alice")
    assert show(c, "PrivateUsers") == "yes"
    set_config(c, admin_group="ct-admins")
    cur = cursor(c)
    c.sh(f"systemctl reload {UNIT}")
    wait(lambda: "not mapped into this service's user namespace" in journal(c, since=cur), 15,
         "the PrivateUsers warning")
    assert ask(c, "poll_now", user="alice")["code"] == "forbidden"
    set_config(c, admin_group="chronotick")
    c.sh(f"systemctl reload {UNIT}")
    wait(lambda: ask(c, "poll_now", user="alice")["ok"], 10, "alice admitted")
    r = ask(c, "poll_now", user="bob")
    assert not r["ok"] and r["code"] == "forbidden" and "uid 65534" in r["message"]
    assert ask(c, "poll_now")["ok"]  # root
    assert now_json(c, user="bob")["bound_ns"] > 0  # queries stay open to everyone


def test_cpu_affinity_blocked_is_explained_and_a_drop_in_allows_it(box: Container) -> None:
    c = box
    set_config(c, model={"enabled": True, "cpu_affinity": "0"})
    restart(c)
    text = wait(lambda: when(journal(c, invocation=True), lambda j: "forecaster off" in j),
                20, "the forecaster's load attempt")
    assert "SystemCallFilter=sched_setaffinity" in text  # names the fix
    c.write(f"{DROPIN}/affinity.conf", "[Service]\nSystemCallFilter=sched_setaffinity\n")
    c.sh("systemctl daemon-reload")
    restart(c)
    text = wait(lambda: when(journal(c, invocation=True), lambda j: "forecaster off" in j),
                20, "the forecaster's load attempt")
    assert "cpu_affinity" not in text  # pinned: no warning this time
    c.sh(f"rm {DROPIN}/affinity.conf && systemctl daemon-reload")
    set_config(c, model={"enabled": False})
    restart(c)


def test_config_error_under_socket_activation_does_not_loop(box: Container) -> None:
    c = box
    c.sh(f"systemctl stop {UNIT}")
    good = c.sh(f"cat {CONF}").stdout
    c.write(CONF, good + "\nntp_typo: 1\n")
    cur = cursor(c)
    r = c.sh("chronotick-cli --timeout 10 --json now", check=False)
    assert r.returncode != 0 and "config error" in (r.stdout + r.stderr)
    time.sleep(3)
    starts = journal(c, since=cur).count("config error")
    assert starts == 1, journal(c, since=cur)
    assert show(c, "ActiveState", "chronotickd.socket") == "active"
    assert show(c, "ExecMainStatus") == "2"
    c.write(CONF, good)
    assert now_json(c)["bound_ns"] > 0


def test_missing_user_fails_once_and_is_not_retried(box: Container) -> None:
    c = box
    c.sh(f"systemctl stop {UNIT} && userdel chronotick && getent passwd chronotick; true")
    c.sh(f"systemctl reset-failed {UNIT}; systemctl start {UNIT}", check=False)
    time.sleep(5)  # > RestartSec=2s: a retry would have happened by now
    assert show(c, "ExecMainStatus") == "217" and show(c, "ActiveState") == "failed"
    assert nrestarts(c) == 0
    c.sh("systemd-sysusers chronotick.conf")
    c.sh(f"systemctl reset-failed {UNIT}; systemctl start {UNIT}")
    assert now_json(c)["bound_ns"] > 0


def test_apt_purge_stops_and_removes_everything(box: Container) -> None:
    c = box
    c.sh(f"rm -rf {DROPIN} && systemctl daemon-reload")
    assert show(c, "ActiveState") == "active"
    pid, cur = show(c, "MainPID"), cursor(c)
    c.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q chronotick", timeout=120)
    assert c.sh(f"test -e /proc/{pid}", check=False).returncode == 1  # gone at once
    assert c.sh("pgrep -f '[c]hronotickd --config'", check=False).returncode == 1
    log = c.sh(f"journalctl --no-pager -o cat --after-cursor='{cur}'").stdout
    assert "Stopping chronotickd.service" in log and "Watchdog timeout" not in log, log
    assert show(c, "LoadState") == "not-found"
    assert show(c, "LoadState", "chronotickd.socket") == "not-found"
    assert not c.sh("ls -d /opt/chronotick /etc/chronotick /var/lib/chronotick /run/chronotick "
                    "/usr/bin/chronotickd /usr/bin/chronotick-cli "
                    "/lib/systemd/system/chronotickd.service "
                    "/etc/systemd/system/*/chronotickd* 2>/dev/null", check=False).stdout
    assert c.sh("dpkg-query -W -f='${Status}' chronotick", check=False).stdout \
        in ("", "unknown ok not-installed")
