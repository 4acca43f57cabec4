"""sd_notify: tell the service manager how the daemon is doing (READY=1, STATUS=, ...).

python-systemd's ``systemd.daemon.notify`` is used when importable (the ``systemd`` extra);
otherwise a few lines of stdlib speak the same protocol: one datagram of ``KEY=VALUE`` lines
to the Unix socket named by ``$NOTIFY_SOCKET`` (``@name`` is the abstract namespace). Without
``$NOTIFY_SOCKET`` (not started by systemd) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("chronotickd.service")


def _python_systemd() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda state: bool(daemon.notify(state))


def _socket_address(name: str) -> str | bytes | None:
    """NOTIFY_SOCKET as a connectable AF_UNIX address (None for kinds we cannot speak)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None  # e.g. vsock:..., only systemd ≥ 254 inside VMs


class Notifier:
    """Sends notify states; thread-safe (each message is one datagram on its own socket)."""

    def __init__(self, env: Mapping[str, str] | None = None, use_python_systemd: bool = True
                 ) -> None:
        env = os.environ if env is None else env
        self.socket_name = env.get("NOTIFY_SOCKET", "")
        self.backend = "none"
        self._send: Callable[[str], bool] | None = None
        self._failed = False
        if not self.socket_name:
            return
        lib = _python_systemd() if use_python_systemd and env is os.environ else None
        if lib is not None:
            self._send, self.backend = lib, "python-systemd"
        elif _socket_address(self.socket_name) is not None:
            self._send, self.backend = self._send_stdlib, "stdlib"
        else:
            log.warning("NOTIFY_SOCKET=%s is not a Unix socket path; install the systemd extra "
                        "(pip install chronotick[systemd]) to notify systemd", self.socket_name)

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def _send_stdlib(self, state: str) -> bool:
        address = _socket_address(self.socket_name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
        return True

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one message. Never raises: the service keeps serving."""
        if self._send is None:
            return False
        state = "\n".join(f.replace("\n", " ") for f in fields)
        try:
            ok = self._send(state)
        except OSError as exc:
            ok = False
            if not self._failed:
                log.warning("cannot notify systemd at %s (%s); continuing without it",
                            self.socket_name, exc.strerror or exc)
        self._failed = not ok
        return ok
