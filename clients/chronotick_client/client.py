"""Blocking client for the chronotickd socket. Standard library + msgpack only.

Reconnects on the next call after any failure, so long-lived users (the MCP adapter) survive a
daemon restart.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from typing import Any

from chronotick_client.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_body,
    default_socket_path,
    encode,
    request,
)
from chronotick_client.shm import ShmReader, ShmUnavailable, default_shm_path

START_HINT = (
    "start the daemon with `sudo systemctl start chronotickd` (or `make run` in a checkout), "
    "or point --socket / CHRONOTICK_SOCKET at the socket it listens on"
)


class DaemonUnavailable(ConnectionError):
    """The daemon's socket could not be reached; the message says which and what to do."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot reach chronotickd at {path}: {reason}; {START_HINT}")
        self.path = path


class RequestFailed(RuntimeError):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    """One connection to chronotickd, opened lazily; thread-safe.

    With ``use_shm=True`` (what chronotick-cli and chronotick-mcp pass), ``now()`` reads the
    daemon's shared-memory segment when one is usable (``shm0`` beside the socket, or
    ``shm_path``) and asks the socket otherwise. A segment that cannot answer honestly (daemon
    stopped, clock stepped, another boot) sends that call to the socket and is looked for
    again a few seconds later. The default is the socket alone: a library user opts in, and
    a program whose clocks are not the daemon's (a test harness under the clock rig) never
    reads a segment written against other clocks.
    """

    SHM_RETRY_S = 5.0

    def __init__(self, path: str | None = None, timeout: float = 2.0,
                 shm_path: str | None = None, use_shm: bool = False) -> None:
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.shm_path = shm_path or default_shm_path(path)
        self._use_shm = use_shm
        self._shm: ShmReader | None = None
        self._shm_retry_at = 0.0

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect bounded by SO_SNDTIMEO, not Python's timeout mode: on a Unix
        # socket a non-blocking connect fails at once with EAGAIN while the daemon's listen
        # queue is full (a connect storm from another user fills it), whereas a blocking one
        # waits its turn in the kernel's queue of connectors, up to the timeout.
        sec = max(self.timeout, 0.001)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(sec), int(sec % 1 * 1e6)))
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise DaemonUnavailable(self.path, "no such socket") from None
        except BlockingIOError:
            sock.close()
            raise DaemonUnavailable(self.path, f"its connection queue stayed full for "
                                    f"{self.timeout:g} s (overloaded?)") from None
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(self.path, exc.strerror or str(exc)) from None
        sock.settimeout(self.timeout)
        return sock

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise DaemonUnavailable(self.path, "connection closed by the daemon")
            buf += chunk
        return bytes(buf)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its ``result`` map; raises on error replies."""
        with self._lock:
            req_id = next(self._ids)
            frame = encode(request(op, req_id, **args))
            for attempt in (0, 1):
                if self._sock is None:
                    self._sock = self._connect()
                try:
                    self._sock.sendall(frame)
                    (length,) = HEADER.unpack(self._recv_exact(self._sock, HEADER.size))
                    if length > MAX_FRAME_BYTES:
                        raise ProtocolError("frame_too_large", f"reply of {length} bytes")
                    reply = decode_body(self._recv_exact(self._sock, length))
                    break
                except (OSError, DaemonUnavailable) as exc:
                    self.close()
                    if attempt:
                        if isinstance(exc, DaemonUnavailable):
                            raise
                        raise DaemonUnavailable(self.path, str(exc)) from None
            if reply.get("v") != PROTOCOL_VERSION:
                raise ProtocolError("unsupported_version", f"daemon speaks v{reply.get('v')}")
            if not reply.get("ok"):
                err = reply.get("error") or {}
                raise RequestFailed(str(err.get("code")), str(err.get("message")))
            return dict(reply.get("result") or {})

    # convenience wrappers -------------------------------------------------------------
    def now(self) -> dict[str, Any]:
        if self._use_shm:
            reader = self._shm
            if reader is None and time.monotonic() >= self._shm_retry_at:
                try:
                    reader = self._shm = ShmReader(self.shm_path)
                except ShmUnavailable:
                    self._shm_retry_at = time.monotonic() + self.SHM_RETRY_S
            if reader is not None:
                try:
                    return reader.now()
                except ShmUnavailable:
                    self._shm = None  # reopened later: a restarted daemon may have replaced it
                    self._shm_retry_at = time.monotonic() + self.SHM_RETRY_S
        return self.call("now")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def sources(self) -> dict[str, Any]:
        return self.call("sources")

    def tracking(self) -> dict[str, Any]:
        return self.call("tracking")

    def future(self, seconds: float) -> dict[str, Any]:
        return self.call("future", seconds=float(seconds))

    def at(self, system_time_ns: int) -> dict[str, Any]:
        return self.call("at", system_time_ns=int(system_time_ns))
