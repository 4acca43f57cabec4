"""The Unix-socket server: length-prefixed msgpack frames in, replies out.

Each connection is an ``asyncio.Protocol``: bytes are buffered in ``data_received``, every
complete frame is answered there and then (the handlers are plain arithmetic on the published
state, so nothing awaits), and the replies go out in one write. No task, future or timer is
created per request: that is what keeps ``now`` close to a bare echo server
(benchmarks/bench_socket.py). A bad frame gets a typed error reply and closes only that
connection. Limits: frame size, concurrent connections, idle time and per-frame completion time
(a slow trickle cannot hold a connection slot forever), checked by one periodic sweep; a client
that stops reading its replies is paused (no unbounded write buffer) and dropped after
``write_timeout_s``. The peer's credentials (SO_PEERCRED) are read once per connection for
admin requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from chronotick_client.protocol import (
    E_BAD_FRAME,
    E_BUSY,
    E_INTERNAL,
    E_TOO_LARGE,
    HEADER,
    MAX_FRAME_BYTES,
    ProtocolError,
    decode_body,
    encode,
    error_reply,
)
from chronotickd.handlers import Handlers, Peer

log = logging.getLogger("chronotickd.server")

_monotonic = time.monotonic
_unpack_header = HEADER.unpack_from
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux ≥ 4.13
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class ServerLimits:
    max_frame_bytes: int = 65536
    max_connections: int = 256
    idle_timeout_s: float = 60.0
    frame_timeout_s: float = 5.0  # once a frame has begun, all of it must arrive this fast
    write_timeout_s: float = 5.0  # a reply must be taken by the client this fast


def peer_credentials(sock: socket.socket | None) -> Peer:
    """pid/uid/gid and supplementary groups of the process at the other end of ``sock``.

    Unknown (non-Unix socket, old kernel) yields uid -1: never privileged.
    """
    if sock is None or sock.family != socket.AF_UNIX:
        return Peer(-1, -1, -1, ())
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return Peer(-1, -1, -1, ())
    groups: tuple[int, ...] = ()
    try:  # Python caps the buffer at 1024 bytes: 256 groups
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    except OSError:  # more groups or an old kernel: the peer's /proc entry
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Groups:"):
                    groups = tuple(int(g) for g in line.split()[1:])
    return Peer(pid, uid, gid, groups)


def bind_unix_socket(path: str, mode: int) -> socket.socket:
    """Create the listening socket, replacing a stale socket file but never a live one."""
    try:
        return _bind(path, mode)
    except OSError as exc:
        if exc.strerror:  # a system error (ours below carry only a message)
            raise OSError(f"cannot create the socket {path}: {exc.strerror}"
                          + (f" ({exc.filename})" if exc.filename not in (None, path) else "")
                          + "; choose a writable path with --socket or the config key "
                          "`socket`") from exc
        raise


def _bind(path: str, mode: int) -> socket.socket:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it or choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            p.unlink()  # stale: nobody listens
        else:
            raise OSError(f"another daemon already listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Connection(asyncio.Protocol):
    """One client connection; replies are written from ``data_received`` itself."""

    def __init__(self, server: SocketServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.last_active = time.monotonic()
        self.frame_started: float | None = None  # when the incomplete frame in buf began
        self.closing = False
        self.close_started: float | None = None  # when we began closing (flush deadline)
        self.write_paused_at: float | None = None  # when the client stopped taking replies
        self.peer = Peer(-1, -1, -1, ())
        self.reply_frame = server.handlers.reply_frame

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = peer_credentials(transport.get_extra_info("socket"))
        srv = self.server
        srv.active += 1
        srv.connections.add(self)
        if srv.active > srv.limits.max_connections:
            srv.rejected += 1
            self.fail(error_reply(None, E_BUSY,
                                  f"too many connections (limit {srv.limits.max_connections}); "
                                  "retry later"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.active -= 1
        self.server.connections.discard(self)
        self.closing = True

    def pause_writing(self) -> None:  # the client does not read its replies: stop reading
        self.write_paused_at = _monotonic()
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_at = None
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = now = _monotonic()
        max_frame = self.server.limits.max_frame_bytes  # read per call: `reload` may change it
        if not self.buf and len(data) > 4:
            # the usual case, one whole request per read: no buffering, no list of replies
            (length,) = _unpack_header(data)
            if len(data) == 4 + length and length <= max_frame:
                frame, last = self._answer(data[4:])
                if last:
                    self._close_after([frame])
                else:
                    self.transport.write(frame)  # type: ignore[union-attr]
                return
        buf = self.buf
        buf += data
        replies: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _unpack_header(buf, pos)
            if length > max_frame:
                self.server.bad_frames += 1
                replies.append(encode(error_reply(
                    None, E_TOO_LARGE, f"frame of {length} bytes over the {max_frame} limit")))
                self._close_after(replies)
                return
            if end - pos - 4 < length:
                break
            frame, last = self._answer(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
            replies.append(frame)
            if last:
                self._close_after(replies)
                return
        if pos:
            del buf[:pos]
            self.frame_started = now if buf else None
        elif self.frame_started is None:
            self.frame_started = now
        if replies:
            self.transport.write(b"".join(replies))  # type: ignore[union-attr]

    def _answer(self, body: bytes) -> tuple[bytes, bool]:
        """(reply frame, whether the connection must close after it) for one request body."""
        try:
            req = decode_body(body)
        except ProtocolError as exc:
            self.server.bad_frames += 1
            return encode(error_reply(None, exc.code or E_BAD_FRAME, exc.message)), True
        self.server.served += 1
        try:
            frame = self.reply_frame(req, self.peer)
            if len(frame) > MAX_FRAME_BYTES + 4:
                raise ProtocolError(E_TOO_LARGE, f"reply of {len(frame) - 4} bytes")
            return frame, False
        except ProtocolError:
            # e.g. a huge string id echoed back: answer without echoing it
            return encode(error_reply(None, E_TOO_LARGE, "reply would exceed the frame limit")), \
                False
        except Exception:
            log.exception("unexpected error serving a request; connection closed")
            self.server.handlers.count_error(E_INTERNAL)
            req_id = req.get("id")
            return encode(error_reply(req_id if type(req_id) in (int, str) else None,
                                      E_INTERNAL, "internal error")), True

    def eof_received(self) -> bool:
        return False  # close our side too

    # -- helpers ----------------------------------------------------------------------------
    def _close_after(self, frames: list[bytes]) -> None:
        """Send the last replies (the final one an error) and close once they are written."""
        self.closing = True
        self.close_started = _monotonic()
        if self.transport is not None:
            self.transport.write(b"".join(frames))
            self.transport.close()

    def fail(self, message: dict) -> None:
        """Send a last (error) reply and close once it is written."""
        self._close_after([encode(message)])

    def expire(self, now: float) -> None:
        """Enforce the idle and per-frame time limits (called by the server's sweep)."""
        lim = self.server.limits
        if self.transport is None:
            return
        if self.closing:
            # close() flushes pending replies first; a client that never reads would keep the
            # socket open for ever, so give the flush a moment, then drop it
            started = self.close_started or now
            self.close_started = started
            if now - started > lim.write_timeout_s:
                self.server.timeouts += 1
                self.transport.abort()
            return
        if self.write_paused_at is not None and now - self.write_paused_at > lim.write_timeout_s:
            self.server.timeouts += 1
            self.closing = True
            self.transport.abort()
            return
        if self.frame_started is not None and now - self.frame_started > lim.frame_timeout_s:
            self.server.timeouts += 1
            self.fail(error_reply(None, E_BAD_FRAME,
                                  f"incomplete frame: not all of it arrived within "
                                  f"{lim.frame_timeout_s:g} s"))
        elif now - self.last_active > lim.idle_timeout_s:
            self.closing = True
            self.close_started = now
            self.transport.close()


class SocketServer:
    def __init__(self, handlers: Handlers, limits: ServerLimits = ServerLimits()) -> None:
        self.handlers = handlers
        self.limits = limits  # replaced whole by `reload`; connections read it per frame
        self.active = 0
        self.served = 0
        self.rejected = 0
        self.bad_frames = 0
        self.timeouts = 0
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            lim = self.limits
            await asyncio.sleep(max(0.05, min(1.0, lim.idle_timeout_s / 4,
                                              lim.frame_timeout_s / 4, lim.write_timeout_s / 4)))
            now = time.monotonic()
            for conn in list(self.connections):
                conn.expire(now)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.closing = True
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
