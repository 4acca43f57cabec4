"""Socket activation: take the listening socket systemd (or launchd-style wrappers) hands over.

Protocol (sd_listen_fds(3)): ``$LISTEN_PID`` equals our pid, ``$LISTEN_FDS`` counts the fds
passed from fd 3 on, ``$LISTEN_FDNAMES`` names them (``FileDescriptorName=``). The variables
are removed afterwards so subprocesses (pmc, phc_ctl) never mistake them for their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("chronotickd.service")

SD_LISTEN_FDS_START = 3
FD_NAME = "chronotick"  # FileDescriptorName= in chronotickd.socket
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _usable(sock: socket.socket) -> bool:
    return (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
            and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)))


def inherited_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The inherited listening Unix stream socket, or None (then the daemon binds its own)."""
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    for var in _VARS:
        env.pop(var, None)
    if not count:
        log.debug("no socket passed in (LISTEN_FDS unset); binding our own")
        return None
    if not pid.isdigit() or int(pid) != os.getpid():
        log.info("LISTEN_FDS is meant for pid %s, not us (%d); binding our own socket",
                 pid, os.getpid())
        return None
    if not count.isdigit() or int(count) < 1:
        log.warning("LISTEN_FDS=%r is not a positive count; binding our own socket", count)
        return None
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    if FD_NAME in names and len(names) == len(fds):  # prefer the fd named so, else the first
        fds.sort(key=lambda fd: names[fd - SD_LISTEN_FDS_START] != FD_NAME)
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("inherited fd %d is not a socket (%s); ignoring it", fd, exc.strerror)
            continue
        if _usable(sock):
            os.set_inheritable(fd, False)
            sock.setblocking(False)
            log.info("using the listening socket passed in on fd %d (%s)", fd,
                     socket_path(sock) or "unnamed")
            return sock
        sock.detach()  # not ours to close: leave it as it was
        log.warning("inherited fd %d is not a listening Unix stream socket; ignoring it", fd)
    log.warning("no usable socket among the %s inherited fds; binding our own socket", count)
    return None


def socket_path(sock: socket.socket) -> str | None:
    """The filesystem path an inherited socket listens on (None for abstract/unnamed)."""
    name = sock.getsockname()
    return name if isinstance(name, str) and name.startswith("/") else None


def refuse_pending(sock: socket.socket, code: str, message: str, wait_s: float = 0.5) -> int:
    """Answer every connection already queued on ``sock`` with one error reply, then close it.

    Used when the daemon cannot start (a config error) but systemd handed it the socket
    because a client connected: left in the queue, that connection would make systemd start
    the service again at once, up to the start limit, and then fail the socket unit itself.
    Draining it ends the loop and tells the waiting client what is wrong. Returns the count.
    """
    from chronotick_client.protocol import HEADER, ProtocolError, decode_body, encode, error_reply

    served = 0
    sock.setblocking(False)
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:  # nothing (more) queued
            return served
        with conn:
            conn.settimeout(wait_s)
            req_id = None
            with contextlib.suppress(OSError, ProtocolError):  # the id, so the client matches
                head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                if len(head) == HEADER.size and HEADER.unpack(head)[0] <= 65536:
                    body = conn.recv(HEADER.unpack(head)[0], socket.MSG_WAITALL)
                    req_id = decode_body(body).get("id")
            with contextlib.suppress(OSError):
                conn.sendall(encode(error_reply(req_id, code, message)))
        served += 1
