"""Real parts for tests: a loopback chronyd that never touches the clock, and a daemon process.

Everything started here is killed by PID and its files removed, even when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "clients"), os.environ.get("PYTHONPATH", "")])
CHRONYD = shutil.which("chronyd") or ("/usr/sbin/chronyd" if Path("/usr/sbin/chronyd").exists()
                                      else None)


def wait_for(fn: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``fn`` every 0.1 s until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_pid(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop one process we started (SIGTERM, then SIGKILL). Never by name."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class Chronyd:
    proc: subprocess.Popen
    port: int
    workdir: Path
    nts_port: int = 0  # NTS-KE port (0: NTS off)
    cert: Path | None = None  # the self-signed certificate clients must trust

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(workdir: Path, name: str = "server", cn: str = "localhost",
              san: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path]:
    """A self-signed EC P-256 certificate and key made with openssl: (cert, key)."""
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={cn}", "-addext",
                    f"subjectAltName={san}"], check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def chronyd_server(port: int | None = None, nts: bool = False) -> Iterator[Chronyd]:
    """A real chronyd serving NTP on 127.0.0.1 (``-x``: it never adjusts the clock); with
    ``nts`` also NTS-KE on a free TCP port with a self-signed certificate made here."""
    if CHRONYD is None:
        raise RuntimeError("chronyd not installed (apt-get install chrony)")
    if os.geteuid() != 0:
        raise RuntimeError("chronyd needs root to start here")
    port = port or free_udp_port()
    work = Path(tempfile.mkdtemp(prefix="ct-chronyd-"))
    os.chmod(work, 0o700)
    conf = work / "chrony.conf"
    conf.write_text(
        f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 1\n"
        f"cmdport 0\nbindcmdaddress {work}/chronyd.sock\npidfile {work}/chronyd.pid\n"
        f"driftfile {work}/drift\n"
    )
    nts_port, cert = 0, None
    if nts:
        nts_port = free_tcp_port()
        cert, key = make_cert(work)
        with conf.open("a") as f:
            f.write(f"bindaddress ::1\nntsport {nts_port}\nntsserverkey {key}\n"
                    f"ntsservercert {cert}\nntsdumpdir {work}\n")
    proc = subprocess.Popen([CHRONYD, "-x", "-d", "-f", str(conf), "-u", "root"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ntp(port, proc)
        if nts:
            _wait_tcp(nts_port, proc)
        yield Chronyd(proc, port, work, nts_port, cert)
    finally:
        kill_pid(proc)
        shutil.rmtree(work, ignore_errors=True)


def _wait_ntp(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    from chronotickd.sources import ntp_packet as pkt

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chronyd exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
                s.send(pkt.client_request(pkt.random_timestamp()))
                if len(s.recv(512)) >= 48:
                    return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError("chronyd did not answer NTP in time")


def _wait_tcp(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chronyd exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("chronyd did not listen for NTS-KE in time")


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    socket: str
    workdir: Path
    config: Path

    def log(self) -> str:
        path = self.workdir / "daemon.log"
        return path.read_text() if path.exists() else ""


def write_config(workdir: Path, **overrides: object) -> Path:
    cfg: dict = {
        "socket": str(workdir / "ct.sock"),
        "state_dir": str(workdir / "state"),
        "shm": {"path": str(workdir / "shm0")},  # never the system's /run/chronotick/shm0
        "log_level": "info",
        # loopback test servers may be polled fast (public names never are)
        "ntp": {"servers": [], "minpoll_s": 0.5, "maxpoll_s": 2, "burst_interval_s": 0.5,
                "timeout_s": 0.5},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path = workdir / "chronotick.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise RuntimeError(f"daemon socket {path} did not appear")


@contextlib.contextmanager
def daemon_process(workdir: Path | None = None, env: dict[str, str] | None = None,
                   **config: object) -> Iterator[DaemonProc]:
    """Run the real ``chronotickd`` (``python -m chronotickd``) with a temporary config."""
    own = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix="ct-daemon-"))
    conf = write_config(work, **config)
    sock = str(work / "ct.sock")
    logf = open(work / "daemon.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "chronotickd", "--config", str(conf)],
                            stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})})
    try:
        wait_for_socket(sock, proc)
        yield DaemonProc(proc, sock, work, conf)
    finally:
        kill_pid(proc)
        logf.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)


def cli(*args: str, socket_path: str | None = None, timeout: float = 10.0
        ) -> subprocess.CompletedProcess:
    """Run the real chronotick-cli (``python -m chronotick_client``)."""
    cmd = [sys.executable, "-m", "chronotick_client"]
    if socket_path:
        cmd += ["--socket", socket_path]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": PYTHONPATH})


# -- host clock tripwire ----------------------------------------------------------------------
class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("_rest", ctypes.c_byte * 200)]


def host_clock_discipline() -> tuple[int, int, int]:
    """The host kernel's (offset, freq, status), read with adjtimex(modes=0): tests that run
    clock software compare it before and after, a tripwire for anyone changing the clock."""
    tx = _Timex()
    ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(tx))
    return tx.offset, tx.freq, tx.status


# -- Prometheus endpoint ----------------------------------------------------------------------
def scrape(port: int, timeout: float = 5.0) -> dict[str, list[Any]]:
    """name → samples of every family, parsed by prometheus-client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def metric(m: dict[str, list[Any]], name: str, **labels: str) -> float:
    """The one sample of ``name`` with these labels (AssertionError unless exactly one)."""
    hits = [s.value for s in m.get(name, []) if all(s.labels.get(k) == v
                                                   for k, v in labels.items())]
    if len(hits) != 1:
        raise AssertionError(f"{name}{labels}: {len(hits)} samples in the scrape")
    return hits[0]
