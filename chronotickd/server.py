"""The Unix-socket server: length-prefixed msgpack frames in, replies out.

A connection is served in its own task; a bad frame gets a typed error reply and closes only
that connection. Limits: frame size, concurrent connections (one more gets ``busy`` and is
closed), idle time between frames and per-frame time (once a frame has begun, all of it must
arrive within ``frame_timeout_s``, so a slow trickle cannot hold a connection slot forever),
and a write timeout (a client that never reads its replies is dropped, not buffered for).
The peer's credentials (SO_PEERCRED) are read once per connection for admin requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from chronotick_client.protocol import (
    E_BAD_FRAME,
    E_BUSY,
    E_INTERNAL,
    E_TOO_LARGE,
    HEADER,
    ProtocolError,
    decode_body,
    encode,
    error_reply,
)
from chronotickd.handlers import Handlers, Peer

log = logging.getLogger("chronotickd.server")

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


class SocketServer:
    def __init__(self, handlers: Handlers, limits: ServerLimits = ServerLimits()) -> None:
        self.handlers = handlers
        self.limits = limits  # replaced whole by `reload`; each connection reads it per frame
        self.active = 0
        self.served = 0
        self.rejected = 0
        self.bad_frames = 0
        self.timeouts = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        # The stream limit is the largest accepted frame that can ever be configured, so a
        # `reload` that raises max_frame_bytes needs no restart.
        self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                       limit=(1 << 20) + 8)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _reply(self, writer: asyncio.StreamWriter, message: dict) -> None:
        try:
            frame = encode(message)
        except ProtocolError:
            # e.g. a huge string id echoed back: answer without echoing it
            frame = encode(error_reply(None, E_TOO_LARGE, "reply would exceed the frame limit"))
        writer.write(frame)
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout_s)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self.active > self.limits.max_connections:
                self.rejected += 1
                await self._reply(writer, error_reply(None, E_BUSY,
                                  f"too many connections (limit {self.limits.max_connections});"
                                  " retry later"))
                return
            peer = peer_credentials(writer.get_extra_info("socket"))
            await self._loop(reader, writer, peer)
        except TimeoutError:
            self.timeouts += 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("unexpected error serving a client; connection closed")
            with contextlib.suppress(Exception):
                await self._reply(writer, error_reply(None, E_INTERNAL, "internal error"))
        finally:
            self.active -= 1
            # close() flushes pending replies first; a client that does not read would keep
            # the socket open for ever, so give the flush a moment, then drop it.
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.limits.write_timeout_s)
            except Exception:
                writer.transport.abort()

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    peer: Peer) -> None:
        while True:
            lim = self.limits
            try:  # idle: waiting for the first byte of the next frame
                first = await asyncio.wait_for(reader.readexactly(1), lim.idle_timeout_s)
            except asyncio.IncompleteReadError:
                return  # clean close between frames
            # the rest of the frame (header included) must arrive within frame_timeout_s
            async with asyncio.timeout(lim.frame_timeout_s):
                (length,) = HEADER.unpack(first + await reader.readexactly(HEADER.size - 1))
                if length > lim.max_frame_bytes:
                    self.bad_frames += 1
                    await self._reply(writer, error_reply(
                        None, E_TOO_LARGE,
                        f"frame of {length} bytes over the {lim.max_frame_bytes} limit"))
                    return
                body = await reader.readexactly(length)
            try:
                req = decode_body(body)
            except ProtocolError as exc:
                self.bad_frames += 1
                await self._reply(writer, error_reply(None, exc.code or E_BAD_FRAME, exc.message))
                return
            self.served += 1
            await self._reply(writer, self.handlers.handle(req, peer))
