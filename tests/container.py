"""A booted Debian 12 container with systemd as PID 1, for tests of the shipped units.

The host has no systemd of its own, so this follows the recipe in docs/service.md ("Tested
under real systemd"): a rootfs made by mmdebstrap and cached as a tar.zst under
``/var/cache/chronotick-test/`` (keyed by a hash of what goes into it), extracted into a
temporary directory, booted with ``systemd-nspawn --boot --private-network`` from a cgroup
of its own, and driven by ``nsenter`` into the container's namespaces. Commands run that way
are NOT confined by the container, so every one runs under ``setpriv
--bounding-set=-sys_time``: nothing started here can set the host's clock. Everything made
(directory, cgroups, processes) is removed by ``Container.close``; processes by PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR = Path(os.environ.get("CHRONOTICK_TEST_CACHE", "/var/cache/chronotick-test"))
SUITE = "bookworm"
# What a plain Debian 12 host with systemd has, plus chrony (run by the test with -x as a
# loopback NTP server; its own service is masked) and the .deb's dependencies, so that
# `apt-get install ./chronotick.deb` succeeds with no network (nspawn --private-network).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "libsystemd0", "chrony", "procps",
            "iproute2", "adduser")
# Nothing in the container may discipline a clock; nothing else should run on a timer.
MASKED = ("chrony.service", "systemd-timesyncd.service", "apt-daily.timer",
          "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer", "getty@.service",
          "console-getty.service", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer")
PATH_IN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("mmdebstrap", "systemd-nspawn", "zstd", "nsenter", "setpriv", "tar")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def host_sources() -> list[Path]:
    """The host's own apt source files (mirror lines), the enabled ones only."""
    d = Path("/etc/apt/sources.list.d")
    files = sorted(p for p in d.glob("*") if p.suffix in (".sources", ".list")) if d.is_dir() \
        else []
    debian = [p for p in files if "debian" in p.read_text()]
    if debian:
        return debian
    legacy = Path("/etc/apt/sources.list")
    return [legacy] if legacy.is_file() and legacy.read_text().strip() else []


def cache_key() -> str:
    h = hashlib.sha256()
    h.update(f"{SUITE}\n{' '.join(PACKAGES)}\n{' '.join(MASKED)}\nv1\n".encode())
    for src in host_sources():
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def rootfs_tarball() -> Path:
    """The cached rootfs, made by mmdebstrap on first use (about 30 s with a mirror)."""
    tar = CACHE_DIR / f"rootfs-{SUITE}-{cache_key()}.tar.zst"
    if tar.exists():
        return tar
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    sources = host_sources()
    if not sources:
        raise RuntimeError("no apt sources in /etc/apt/sources.list.d/ to build a rootfs from")
    hooks = [f'ln -sf /dev/null "$1/etc/systemd/system/{u}"' for u in MASKED]
    hooks += ['rm -f "$1/etc/hostname"', 'echo chronotick-test > "$1/etc/hostname.unused"']
    tmp = tar.with_suffix(f".tmp{os.getpid()}")
    cmd = ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
           "--include=" + ",".join(PACKAGES),
           *[f"--customize-hook={h}" for h in hooks],
           SUITE, str(tmp) + ".tar", *map(str, sources)]
    try:
        subprocess.run(cmd, check=True, timeout=600, stdin=subprocess.DEVNULL)
        subprocess.run(["zstd", "-q", "-T0", "--rm", "-f", str(tmp) + ".tar", "-o", str(tmp)],
                       check=True, timeout=300)
        tmp.rename(tar)
    finally:
        for p in (tmp, Path(str(tmp) + ".tar")):
            p.unlink(missing_ok=True)
    return tar


class Container:
    """One booted container. ``sh(...)`` runs a command inside, ``close()`` removes it all."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"ct17-{os.getpid()}"
        self.dir = Path(tempfile.mkdtemp(prefix="ct17-root-"))
        self.root = self.dir / "root"
        self.root.mkdir()
        self.cgroups: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.console = self.dir / "console.log"

    # -- lifecycle --------------------------------------------------------------------------
    def boot(self, timeout: float = 60.0) -> None:
        subprocess.run(["tar", "--zstd", "-xpf", str(rootfs_tarball()), "-C", str(self.root)],
                       check=True, timeout=300)
        # The host runs no systemd: nspawn must start from a cgroup of its own (v2 "unified"
        # and the named v1 "systemd" hierarchy of this hybrid host).
        for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"):
            b = Path(base)
            if (b / "cgroup.procs").exists() and not any(c.parent == b for c in self.cgroups):
                cg = b / self.name
                cg.mkdir(exist_ok=True)
                self.cgroups.append(cg)
            if base == "/sys/fs/cgroup/systemd" and self.cgroups:
                break
        procs = " ".join(f"{c}/cgroup.procs" for c in self.cgroups)
        launcher = f'for f in {procs}; do echo $$ > "$f"; done; exec "$@"'
        cmd = ["sh", "-c", launcher, "sh", "setpriv", "--bounding-set=-sys_time",
               "systemd-nspawn", f"--directory={self.root}", "--boot",
               f"--machine={self.name}", "--register=no", "--keep-unit", "--private-network",
               "--link-journal=no", "--drop-capability=CAP_SYS_TIME",
               "--console=read-only", "--quiet"]
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with open(self.console, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.pid1 is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"container did not boot:\n{self.console.read_text()[-3000:]}")
            self.pid1 = self._find_pid1()
            time.sleep(0.1)
        while True:
            r = self.sh("systemctl is-system-running", check=False)
            if r.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"container never finished booting: {r.stdout.strip()}\n"
                                   + self.sh("systemctl --failed", check=False).stdout)
            time.sleep(0.2)

    def _find_pid1(self) -> int | None:
        """PID 1 of the container: the (grand)child of nspawn whose comm is ``systemd``."""
        assert self.proc is not None
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
                    todo.append(int(child))
        return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):  # SIGTERM to nspawn: clean container shutdown
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for cg in reversed(self.cgroups):
            for _ in range(50):  # empty once the container's processes are gone
                try:
                    self._rmdir_tree(cg)
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _rmdir_tree(cg: Path) -> None:
        if not cg.exists():
            return
        for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        cg.rmdir()

    # -- commands inside ----------------------------------------------------------------
    def sh(self, script: str, check: bool = True, timeout: float = 60.0, user: str | None = None,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``sh -c script`` in the container's namespaces (never with CAP_SYS_TIME)."""
        assert self.pid1 is not None
        inner = ["sh", "-c", script]
        if user is not None:  # setpriv inside: the user's own groups, as after a login
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *inner]
        cmd = ["setpriv", "--bounding-set=-sys_time", "nsenter", "-t", str(self.pid1),
               "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--",
               "env", "-i", f"PATH={PATH_IN}", "LANG=C.UTF-8", "HOME=/root", *inner]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"in container: {script!r} → rc {r.returncode}\n"
                                 f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
        return r

    def copy_in(self, src: Path, dest: str) -> None:
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)

    def write(self, dest: str, text: str) -> None:
        self.sh(f"mkdir -p \"$(dirname '{dest}')\" && cat > '{dest}'", input=text)


@contextlib.contextmanager
def booted() -> Iterator[Container]:
    c = Container()
    try:
        c.boot()
        yield c
    finally:
        c.close()
