"""chronotickd as a system service: units, sd_notify, socket activation, journald, launchd.

Real parts: ``systemd-analyze`` on the shipped units, the real daemon process talking to a
real datagram socket named by NOTIFY_SOCKET, a listening socket handed over through
LISTEN_FDS (by a tiny exec wrapper and by systemd's own ``systemd-socket-activate``), and a
journal socket mounted into a private mount namespace where journald would be.
Run with ``-s`` to see the exposure score and the start→READY=1 time printed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import plistlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PYTHONPATH, REPO, cli, kill_pid, wait_for_socket, write_config

from chronotickd.service import Notifier, status_line, watchdog_interval
from chronotickd.service.activation import inherited_socket

UNITS = REPO / "packaging" / "systemd"
PLIST = REPO / "packaging" / "launchd" / "org.chronotick.chronotickd.plist"
ANALYZE = shutil.which("systemd-analyze")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
ENTRY_POINT = Path(sys.executable).parent / "chronotickd"
MAX_EXPOSURE = 1.5  # issue 17's limit; the real-systemd test checks it too

needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")


# -- helpers --------------------------------------------------------------------------------
@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ct6-svc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                        "LISTEN_PID", "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = PYTHONPATH
    env.update(extra)
    return env


DAEMON = [sys.executable, "-m", "chronotickd"]
# The daemon as it runs without the `systemd` extra: python-systemd made unimportable.
DAEMON_NO_EXTRA = [sys.executable, "-c",
                   "import sys; sys.modules['systemd'] = None; "
                   "from chronotickd.daemon import main; sys.exit(main())"]
# sh's $$ is the pid the daemon keeps after exec: how systemd sets WATCHDOG_PID/LISTEN_PID.
WITH_OWN_PID = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh"]


class NotifyListener:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path | None = None, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ct6-notify-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.name = "@" + name
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.name = str(path)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def collect(self, until: float) -> None:
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0
                 ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for _, fields in self.messages[seen:]:
                if key in fields and (value is None or fields[key] == value):
                    return fields
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {key}={value or '*'} in {self.messages}")
            self.collect(min(deadline, time.monotonic() + 0.2))

    def values(self, key: str) -> list[str]:
        return [f[key] for _, f in self.messages if key in f]


def spawn(cmd: list[str], env: dict[str, str], log: Path, **kw: object) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                **kw)  # type: ignore[call-overload]


def stop(proc: subprocess.Popen) -> int:
    kill_pid(proc)
    return proc.returncode


# -- unit files -----------------------------------------------------------------------------
def unit_copy(dest: Path, exe: Path) -> Path:
    """The shipped units with ExecStart pointed at ``exe`` (what `make install` does)."""
    for unit in ("chronotickd.service", "chronotickd.socket"):
        text = (UNITS / unit).read_text().replace("/usr/bin/chronotickd", str(exe))
        (dest / unit).write_text(text)
    return dest / "chronotickd.service"


def test_units_declare_what_the_issue_asks() -> None:
    service = "\n".join(line for line in (UNITS / "chronotickd.service").read_text()
                        .splitlines() if not line.startswith("#")) + "\n"
    for line in ("Type=notify", "Restart=on-failure", "RuntimeDirectory=chronotick",
                 "StateDirectory=chronotick", "ConfigurationDirectory=chronotick",
                 "WatchdogSec=", "CapabilityBoundingSet=\n", "DeviceAllow=char-ptp",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "User=chronotick",
                 "ExecStart=/usr/bin/chronotickd --config /etc/chronotick/chronotick.yaml",
                 "RuntimeDirectoryPreserve=yes", "Wants=chronotickd.socket",
                 "ExecReload=/bin/kill -HUP $MAINPID", "RestartPreventExitStatus=2 217\n"):
        assert line in service, line
    assert "CAP_SYS_TIME" not in service
    # a private /dev, with the PTP hardware clocks bound in (tested for real in the container)
    assert "PrivateDevices=yes" in service and "-/dev/ptp0" in service
    sock = (UNITS / "chronotickd.socket").read_text()
    assert "ListenStream=/run/chronotick/chronotick.sock" in sock
    assert "FileDescriptorName=chronotick" in sock
    users = (REPO / "packaging/sysusers.d/chronotick.conf").read_text()
    assert re.search(r"^u\s+chronotick\s", users, re.M)


@needs_analyze
def test_systemd_analyze_verify_accepts_the_units() -> None:
    if not ENTRY_POINT.exists():
        pytest.skip(f"no built entry point at {ENTRY_POINT} (run `make deps`)")
    with workdir() as d:
        service = unit_copy(d, ENTRY_POINT)
        res = subprocess.run([ANALYZE, "verify", str(service), str(d / "chronotickd.socket")],
                             capture_output=True, text=True, timeout=60, cwd=d)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        assert "chronotickd" not in out, out  # no warning about our units at all
        # The check has teeth: a missing executable is reported.
        missing = unit_copy(d, d / "no-such-chronotickd")
        res = subprocess.run([ANALYZE, "verify", str(missing)], capture_output=True,
                             text=True, timeout=60, cwd=d)
        assert res.returncode != 0 and "no-such-chronotickd" in res.stdout + res.stderr


@needs_analyze
def test_security_exposure_at_most_1_5() -> None:
    with workdir() as d:
        service = unit_copy(d, ENTRY_POINT)
        res = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager",
                              str(service)], capture_output=True, text=True, timeout=60, cwd=d)
    out = res.stdout + res.stderr
    m = re.search(r"Overall exposure level for chronotickd\.service: ([0-9.]+)", out)
    assert m, out
    exposure = float(m.group(1))
    print(f"\nsystemd-analyze security exposure for chronotickd.service: {exposure} "
          f"(limit {MAX_EXPOSURE}; chrony.service: 3.7)")
    assert exposure <= MAX_EXPOSURE, out
    assert re.search(r"✓ CapabilityBoundingSet=~CAP_SYS_TIME", out), out


# -- sd_notify --------------------------------------------------------------------------------
def test_status_line_and_watchdog_interval() -> None:
    assert status_line({"status": "synchronized", "source": "ntp:a", "warmup_progress": 1.0}) \
        == "synchronized via ntp:a"
    assert status_line({"status": "unsynchronized", "source": "system",
                        "warmup_progress": 0.427}) == "warming up 42%: unsynchronized via system"
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert not Notifier({}).notify("READY=1")  # not under systemd: a no-op


class _Recorder(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[float, str]] = []

    def notify(self, *fields: str) -> bool:
        self.sent.extend((time.monotonic(), f) for f in fields)
        return True


def test_watchdog_pings_come_from_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blocked loop sends no pings (systemd then restarts us); a stalled engine neither."""
    import asyncio

    from chronotickd.service import watchdog as wd

    monkeypatch.setattr(wd, "ENGINE_STALL_MIN_S", 0.5)
    rec = _Recorder()
    dog = wd.Watchdog(rec, 0.05)

    async def scenario() -> tuple[int, int, int]:
        dog.start()
        await asyncio.sleep(0.3)
        dog.tick()
        before = len(rec.sent)
        time.sleep(0.4)  # the loop hangs: nothing may be sent meanwhile
        during = len(rec.sent) - before
        # Engine silent from now on: pings stop once it has been quiet for 0.5 s.
        await asyncio.sleep(1.0)
        n = len(rec.sent)
        await asyncio.sleep(0.3)
        after_stall = len(rec.sent) - n
        dog.stop()
        return before, during, after_stall

    before, during, after_stall = asyncio.run(scenario())
    assert before >= 4 and during == 0 and after_stall == 0, (before, during, after_stall)
    assert {f for _, f in rec.sent} == {"WATCHDOG=1"}


def test_notify_protocol_with_real_daemon(chronyd) -> None:
    """READY=1 while warm-up runs, STATUS= progress, WATCHDOG=1, STOPPING=1 on SIGTERM."""
    with workdir() as d:
        listener = NotifyListener(d / "notify")
        conf = write_config(d, ntp__servers=[chronyd.server], ntp__minpoll_s=0.3,
                            ntp__burst_interval_s=0.3)
        env = daemon_env(NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="400000")
        t0 = time.monotonic()
        proc = spawn([*WITH_OWN_PID, *DAEMON, "--config", str(conf)], env, d / "log")
        try:
            ready = listener.wait_for("READY", "1")
            ready_s = listener.messages[-1][0] - t0
            print(f"\nstart → READY=1: {ready_s * 1e3:.0f} ms (python-systemd backend)")
            assert ready["MAINPID"] == str(proc.pid)
            assert "STATUS" in ready
            # Clients are served as soon as READY=1 is out.
            res = cli("--json", "now", socket_path=str(d / "ct.sock"))
            assert res.returncode == 0, res.stderr
            # Warm-up progress and the status reaching synchronized, in STATUS= lines.
            listener.wait_for("STATUS", None)
            deadline = time.monotonic() + 20
            while not any("synchronized via ntp" in s and "unsync" not in s
                          for s in listener.values("STATUS")):
                assert time.monotonic() < deadline, listener.values("STATUS")
                listener.collect(time.monotonic() + 0.3)
            statuses = listener.values("STATUS")
            assert any(s.startswith("warming up") for s in statuses), statuses
            # Sent only when the text changes.
            assert all(a != b for a, b in itertools.pairwise(statuses)), statuses
            # Watchdog: every WATCHDOG_USEC/2 = 0.2 s from the event loop.
            n0 = len(listener.values("WATCHDOG"))
            listener.collect(time.monotonic() + 1.0)
            assert len(listener.values("WATCHDOG")) - n0 >= 3, listener.messages[-10:]
            proc.send_signal(signal.SIGTERM)
            listener.wait_for("STOPPING", "1", timeout=10)
            assert proc.wait(10) == 0
        finally:
            stop(proc)
            listener.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_without_python_systemd(abstract: bool) -> None:
    """The stdlib fallback speaks the same protocol, abstract namespace (@name) included."""
    with workdir() as d:
        listener = NotifyListener(d / "notify", abstract=abstract)
        conf = write_config(d)
        env = daemon_env(NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="300000")
        proc = spawn([*WITH_OWN_PID, *DAEMON_NO_EXTRA, "--config", str(conf)], env, d / "log")
        try:
            listener.wait_for("READY", "1")
            listener.wait_for("STATUS", "unsynchronized via system")
            listener.collect(time.monotonic() + 0.5)
            assert len(listener.values("WATCHDOG")) >= 2
            assert "notify: stdlib" in (d / "log").read_text()
            proc.send_signal(signal.SIGTERM)
            listener.wait_for("STOPPING", "1", timeout=10)
            assert proc.wait(10) == 0
        finally:
            stop(proc)
            listener.close()


def test_no_watchdog_pings_for_another_pid() -> None:
    """WATCHDOG_PID names someone else (a child inherited the variables): no pings."""
    with workdir() as d:
        listener = NotifyListener(d / "notify")
        conf = write_config(d)
        env = daemon_env(NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="200000",
                         WATCHDOG_PID="1")
        proc = spawn([*DAEMON, "--config", str(conf)], env, d / "log")
        try:
            listener.wait_for("READY", "1")
            listener.collect(time.monotonic() + 0.8)
            assert listener.values("WATCHDOG") == []
        finally:
            stop(proc)
            listener.close()


def test_config_error_is_reported_to_systemd() -> None:
    with workdir() as d:
        listener = NotifyListener(d / "notify")
        conf = d / "bad.yaml"
        conf.write_text("no_such_key: 1\n")
        res = subprocess.run([*DAEMON, "--config", str(conf)], env=daemon_env(
            NOTIFY_SOCKET=listener.name), cwd=REPO, capture_output=True, text=True, timeout=30)
        assert res.returncode == 2  # RestartPreventExitStatus=2: no restart loop
        listener.collect(time.monotonic() + 0.5)
        assert any("no_such_key" in s for s in listener.values("STATUS")), listener.messages
        listener.close()


# -- socket activation ----------------------------------------------------------------------
# A small exec wrapper, as systemd does it: the socket on fd 3, LISTEN_PID = the pid that
# execs the daemon.
ACTIVATE_WRAPPER = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.close(int(sys.argv[1]))\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1',"
    " LISTEN_FDNAMES='chronotick')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'chronotickd', *sys.argv[2:]])\n"
)


def _listening_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(16)
    return s


def _query(path: Path) -> None:
    res = cli("--json", "now", socket_path=str(path))
    assert res.returncode == 0, res.stderr
    assert '"status"' in res.stdout


def test_socket_activation_by_exec_wrapper() -> None:
    with workdir() as d:
        conf = write_config(d)  # its own socket would be d/ct.sock
        activated = d / "activated.sock"
        lsock = _listening_socket(activated)
        proc = spawn([sys.executable, "-c", ACTIVATE_WRAPPER, str(lsock.fileno()),
                      "--config", str(conf)], daemon_env(), d / "log",
                     pass_fds=(lsock.fileno(),))
        lsock.close()  # the daemon holds the only copy now
        try:
            # Connections queue on the inherited socket even before the daemon accepts.
            _query(activated)
            log = (d / "log").read_text()
            assert "passed in on fd 3" in log and str(activated) in log, log
            assert not (d / "ct.sock").exists()  # it did not bind its own
            assert stop(proc) == 0
            assert activated.exists()  # not ours to remove (RemoveOnStop= is systemd's)
        finally:
            stop(proc)


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate not installed")
def test_socket_activation_by_systemd_socket_activate() -> None:
    with workdir() as d:
        conf = write_config(d)
        activated = d / "sa.sock"
        proc = spawn([SOCKET_ACTIVATE, "-l", str(activated), "--fdname=chronotick",
                      *DAEMON, "--config", str(conf)], daemon_env(), d / "log")
        try:
            deadline = time.monotonic() + 10
            while not activated.exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            _query(activated)  # the first connection makes it exec the daemon
            _query(activated)
            assert not (d / "ct.sock").exists()
            assert "passed in on fd 3" in (d / "log").read_text()
        finally:
            stop(proc)


def test_socket_for_another_pid_is_ignored() -> None:
    """LISTEN_PID not ours (inherited by accident): the daemon binds its own socket."""
    with workdir() as d:
        conf = write_config(d)
        proc = spawn([*DAEMON, "--config", str(conf)],
                     daemon_env(LISTEN_PID="1", LISTEN_FDS="1"), d / "log")
        try:
            wait_for_socket(str(d / "ct.sock"), proc)
            _query(d / "ct.sock")
        finally:
            stop(proc)


def test_inherited_socket_none_and_env_cleared() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert inherited_socket(env) is None
    assert env == {}  # never passed on to pmc/phc_ctl


# -- logging --------------------------------------------------------------------------------
def _journal_fields(datagram: bytes) -> dict[str, str]:
    """Parse journald's native protocol: KEY=VALUE lines, or KEY\\n<le64 size><data>\\n."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", datagram, nl + 1)
            value = datagram[nl + 9: nl + 9 + size]
            i = nl + 9 + size + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


JOURNAL_NS = ('mount -t tmpfs tmpfs /run/systemd 2>/dev/null || '
              '{ mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd; } && '
              'mkdir /run/systemd/journal && mount --bind "$JDIR" /run/systemd/journal && '
              'exec "$@"')


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare to mount a journal socket privately")
@pytest.mark.parametrize("level", ["info", "debug"])
def test_journald_structured_fields(level: str) -> None:
    """Under systemd the records reach the journal socket with structured fields."""
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        pytest.skip("python-systemd not installed (pip install chronotick[systemd])")
    with workdir() as d:
        jdir = d / "journal"
        jdir.mkdir()
        jsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        jsock.bind(str(jdir / "socket"))
        conf = write_config(d)
        env = daemon_env(JDIR=str(jdir), INVOCATION_ID=uuid.uuid4().hex)
        proc = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", JOURNAL_NS,
                      "sh", *DAEMON, "--config", str(conf), "--log-level", level], env,
                     d / "log")
        records: list[dict[str, str]] = []
        try:
            deadline = time.monotonic() + 20
            while not any("ready after" in r.get("MESSAGE", "") for r in records):
                assert time.monotonic() < deadline, ((d / "log").read_text(), records)
                jsock.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    records.append(_journal_fields(jsock.recv(1 << 20)))
        finally:
            stop(proc)
            jsock.close()
        ready = next(r for r in records if "ready after" in r["MESSAGE"])
        assert ready["PRIORITY"] == "6"
        assert ready["SYSLOG_IDENTIFIER"] == "chronotickd"
        assert ready["LOGGER"] == "chronotickd.service"
        assert ready["CHRONOTICK_VERSION"]
        assert ready["CHRONOTICK_SOCKET"] == str(d / "ct.sock")
        assert ready["CODE_FILE"].endswith("__init__.py") and ready["CODE_FUNC"] == "ready"
        debug = [r for r in records if r["PRIORITY"] == "7"]
        assert bool(debug) == (level == "debug"), records  # --log-level honoured
        assert not (d / "log").read_text().strip()  # nothing went to stderr instead


def test_stderr_under_systemd_without_journal_gets_priority_prefixes() -> None:
    """No journal socket / no python-systemd: stderr lines carry <N> for journald."""
    with workdir() as d:
        conf = write_config(d)
        proc = spawn([*DAEMON_NO_EXTRA, "--config", str(conf), "--log-level", "debug"],
                     daemon_env(INVOCATION_ID=uuid.uuid4().hex), d / "log")
        try:
            wait_for_socket(str(d / "ct.sock"), proc)
            time.sleep(0.3)
        finally:
            stop(proc)
        lines = (d / "log").read_text().splitlines()
        assert any(line.startswith("<6>") and "listening on" in line for line in lines), lines
        assert any(line.startswith("<7>") for line in lines), lines


def test_stderr_outside_systemd_honours_log_level() -> None:
    with workdir() as d:
        conf = write_config(d)
        proc = spawn([*DAEMON, "--config", str(conf), "--log-level", "warning"],
                     daemon_env(), d / "log")
        try:
            wait_for_socket(str(d / "ct.sock"), proc)
            time.sleep(0.3)
        finally:
            stop(proc)
        assert " INFO " not in (d / "log").read_text()


# -- launchd ----------------------------------------------------------------------------------
def test_launchd_plist() -> None:
    with open(PLIST, "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "org.chronotick.chronotickd"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # like Restart=on-failure
    assert plist["ThrottleInterval"] >= 2
    # no launchd socket activation: the daemon binds --socket itself (docs/service.md)
    assert "Sockets" not in plist and "launch_activate_socket" not in \
        (REPO / "chronotickd" / "service" / "activation.py").read_text()
    assert set(plist) <= {"Label", "ProgramArguments", "RunAtLoad", "KeepAlive",
                          "ThrottleInterval", "ProcessType", "EnvironmentVariables",
                          "StandardOutPath", "StandardErrorPath", "WorkingDirectory"}, set(plist)
    args = plist["ProgramArguments"]
    assert args[0] == "/usr/local/bin/chronotickd"
    opts = dict(zip(args[1::2], args[2::2], strict=True))
    assert opts["--config"] == "/usr/local/etc/chronotick/chronotick.yaml"
    assert opts["--socket"] == "/var/run/chronotick/chronotick.sock"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert plist[key].startswith("/usr/local/var/log/chronotick/")
    for path in [args[0], *opts.values(), plist["StandardOutPath"], plist["WorkingDirectory"]]:
        assert os.path.isabs(path) and not path.startswith(("/run/", "/etc/", "/var/lib/")), path
    # The options it passes are ones chronotickd accepts.
    from chronotickd.daemon import parse_args
    ns = parse_args(args[1:])
    assert ns.config == opts["--config"] and ns.state_dir == opts["--state-dir"]
    doc = (REPO / "docs" / "service.md").read_text()
    for path in opts.values():
        assert path in doc, path
    assert "what is and is not tested" in doc


# -- install ----------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_install_data_honours_destdir_and_keeps_config() -> None:
    with workdir() as d:
        def install() -> str:
            res = subprocess.run(["make", "-s", "install-data", f"DESTDIR={d}", "PREFIX=/usr"],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            return res.stdout
        install()
        unit = (d / "usr/lib/systemd/system/chronotickd.service").read_text()
        assert "ExecStart=/usr/bin/chronotickd --config /etc/chronotick/chronotick.yaml" in unit
        for rel in ("usr/lib/systemd/system/chronotickd.socket",
                    "usr/lib/sysusers.d/chronotick.conf", "usr/lib/tmpfiles.d/chronotick.conf",
                    "usr/lib/udev/rules.d/60-chronotick-ptp.rules",
                    "usr/share/doc/chronotick/service.md", "etc/chronotick/chronotick.yaml"):
            assert (d / rel).is_file(), rel
        conf = d / "etc/chronotick/chronotick.yaml"
        conf.write_text("log_level: debug\n")
        out = install()
        assert conf.read_text() == "log_level: debug\n"  # an admin's config is never replaced
        assert (d / "etc/chronotick/chronotick.yaml.dist").is_file() and "kept" in out
        # The snippets work: sysusers creates the user, tmpfiles its directories.
        sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
        if sysusers and tmpfiles and os.geteuid() == 0:  # they chown: root only
            subprocess.run([sysusers, f"--root={d}"], check=True, capture_output=True)
            assert re.search(r"^chronotick:x:\d+:\d+:", (d / "etc/passwd").read_text(), re.M)
            subprocess.run([tmpfiles, "--create", f"--root={d}"], check=True,
                           capture_output=True)
            state = (d / "var/lib/chronotick").stat()
            assert oct(state.st_mode & 0o777) == "0o750"
            assert (d / "run/chronotick").is_dir()


@pytest.mark.slow
@needs_analyze
@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_install_builds_a_working_entry_point() -> None:
    """Full `make install` into a staging dir (builds a venv: ~20 s): the unit verifies
    against the installed entry point and that entry point runs."""
    with workdir() as d:
        res = subprocess.run(["make", "-s", "install", f"DESTDIR={d}", "PREFIX=/usr",
                              f"PYTHON={sys.executable}"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        exe = d / "usr/bin/chronotickd"
        # Its shebang names the final path (/usr/lib/chronotick/venv/bin/python), so in the
        # staging dir it runs through the staged venv's interpreter.
        venv_python = d / "usr/lib/chronotick/venv/bin/python"
        assert exe.read_text().startswith("#!/usr/lib/chronotick/venv/bin/python")
        out = subprocess.run([str(venv_python), str(exe), "--version"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "chronotickd" in out.stdout, out
        installed = (d / "usr/lib/systemd/system/chronotickd.service").read_text()
        (d / "verify").mkdir()
        (d / "verify/chronotickd.service").write_text(
            installed.replace("/usr/bin/chronotickd", str(exe)))
        (d / "verify/chronotickd.socket").write_text(
            (d / "usr/lib/systemd/system/chronotickd.socket").read_text())
        res = subprocess.run([ANALYZE, "verify", str(d / "verify/chronotickd.service")],
                             capture_output=True, text=True, timeout=60, cwd=d)
        assert res.returncode == 0, res.stdout + res.stderr


def test_journal_stream_must_be_our_stderr() -> None:
    """$JOURNAL_STREAM inherited by a program whose stderr was redirected does not count."""
    from chronotickd.service.logs import stderr_is_journal, under_systemd

    with tempfile.TemporaryFile("w") as stream, tempfile.TemporaryFile("w") as other:
        st, ot = os.fstat(stream.fileno()), os.fstat(other.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{ot.st_dev}:{ot.st_ino}"}, stream)
        assert not stderr_is_journal({"JOURNAL_STREAM": "junk"}, stream)
        assert not under_systemd({}, stream)
        assert under_systemd({"INVOCATION_ID": "ab12"}, stream)


# -- start failures under socket activation, PrivateUsers ---------------------------------------
def test_refuse_pending_answers_queued_clients_with_the_error() -> None:
    """A daemon that cannot start drains the activation socket: each waiting client gets
    config_error (with its request id) instead of re-triggering the service (issue 17)."""
    from chronotick_client.protocol import HEADER, decode_body, encode, request
    from chronotickd.service.activation import refuse_pending

    with workdir() as d:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(d / "s.sock"))
        listener.listen(8)
        clients = []
        for i in range(3):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(d / "s.sock"))
            if i < 2:  # the third sends nothing: still answered, with id None
                c.sendall(encode(request("now", req_id=40 + i)))
            clients.append(c)
        assert refuse_pending(listener, "config_error", "bad key x; fix it", wait_s=0.2) == 3
        for i, c in enumerate(clients):
            c.settimeout(5)
            head = c.recv(HEADER.size, socket.MSG_WAITALL)
            reply = decode_body(c.recv(HEADER.unpack(head)[0], socket.MSG_WAITALL))
            assert reply["ok"] is False and reply["error"]["code"] == "config_error"
            assert reply["id"] == (40 + i if i < 2 else None)
            assert c.recv(1) == b""  # closed
            c.close()
        assert refuse_pending(listener, "config_error", "x") == 0  # queue empty
        listener.close()


def test_gid_mapped_reads_the_user_namespace_map(tmp_path: Path) -> None:
    from chronotickd.service.userns import gid_mapped

    m = tmp_path / "gid_map"
    m.write_text("         0          0          1\n       997        997          1\n")
    assert gid_mapped(0, m) and gid_mapped(997, m)
    assert not gid_mapped(1000, m) and not gid_mapped(998, m)
    m.write_text("         0          0 4294967295\n")  # no user namespace: all mapped
    assert gid_mapped(1000, m)
    assert gid_mapped(5, tmp_path / "missing")
