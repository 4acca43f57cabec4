"""The Unix-socket server: length-prefixed msgpack frames in, replies out.

A connection is served in its own task; a bad frame gets a typed error reply and closes only
that connection. Limits: frame size, concurrent connections, idle time and per-frame read
time (a slow trickle cannot hold a connection slot forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
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
from chronotickd.handlers import Handlers

log = logging.getLogger("chronotickd.server")


@dataclass(frozen=True)
class ServerLimits:
    max_frame_bytes: int = 65536
    max_connections: int = 256
    idle_timeout_s: float = 60.0
    frame_timeout_s: float = 5.0  # once a frame has begun, all of it must arrive this fast


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
        self.limits = limits
        self.active = 0
        self.served = 0
        self.rejected = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                       limit=self.limits.max_frame_bytes + 8)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _reply(self, writer: asyncio.StreamWriter, message: dict) -> None:
        writer.write(encode(message))
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self.active > self.limits.max_connections:
                self.rejected += 1
                await self._reply(writer, error_reply(None, E_BUSY,
                                  f"too many connections (limit {self.limits.max_connections})"))
                return
            await self._loop(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("unexpected error serving a client; connection closed")
            with contextlib.suppress(Exception):
                await self._reply(writer, error_reply(None, E_INTERNAL, "internal error"))
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lim = self.limits
        while True:
            try:
                header = await asyncio.wait_for(reader.readexactly(HEADER.size),
                                                lim.idle_timeout_s)
            except asyncio.IncompleteReadError:
                return  # clean close between frames
            (length,) = HEADER.unpack(header)
            if length > lim.max_frame_bytes:
                await self._reply(writer, error_reply(None, E_TOO_LARGE,
                                  f"frame of {length} bytes over the {lim.max_frame_bytes} limit"))
                return
            body = await asyncio.wait_for(reader.readexactly(length), lim.frame_timeout_s)
            try:
                req = decode_body(body)
            except ProtocolError as exc:
                await self._reply(writer, error_reply(None, exc.code or E_BAD_FRAME, exc.message))
                return
            self.served += 1
            await self._reply(writer, self.handlers.handle(req))
