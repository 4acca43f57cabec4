"""The socket server in-process on a real Unix socket: framing across reads, pipelining, limits
(connections, frame size, idle and per-frame time) and shutdown with clients attached."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

from chronotickd.core.engine import Engine
from chronotickd.handlers import Handlers
from chronotickd.publish import Publisher
from chronotickd.server import ServerLimits, SocketServer, bind_unix_socket


def frame(obj: Any) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


async def read_reply(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        head = await asyncio.wait_for(reader.readexactly(4), 5)
    except asyncio.IncompleteReadError:
        return None
    (n,) = struct.unpack(">I", head)
    return msgpack.unpackb(await reader.readexactly(n))


def serve(tmp_path: Path, limits: ServerLimits,
          body: Callable[[str, SocketServer], Awaitable[None]]) -> None:
    async def main() -> None:
        path = str(tmp_path / "s.sock")
        server = SocketServer(Handlers(Publisher(Engine().snapshot(0.0))), limits)
        await server.start(bind_unix_socket(path, 0o600))
        try:
            await body(path, server)
        finally:
            await server.close()
    asyncio.run(main())


def test_frames_split_and_pipelined(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        r, w = await asyncio.open_unix_connection(path)
        data = b"".join(frame({"v": 1, "id": i, "op": "now"}) for i in range(5))
        for i in range(0, len(data), 7):  # dribbled in 7-byte pieces
            w.write(data[i : i + 7])
            await w.drain()
            await asyncio.sleep(0)
        ids = [(await read_reply(r))["id"] for _ in range(5)]
        assert ids == [0, 1, 2, 3, 4]
        w.write(frame({"v": 1, "id": 9, "op": "status"}) * 3)  # three in one write
        replies = [await read_reply(r) for _ in range(3)]
        assert all(x["ok"] and x["id"] == 9 for x in replies)
        assert server.served == 8
        w.close()
    serve(tmp_path, ServerLimits(), body)


def test_bad_frame_after_good_ones_answers_them_first(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(frame({"v": 1, "id": 1, "op": "now"}) + struct.pack(">I", 2) + b"\xc1\xc1")
        first, second = await read_reply(r), await read_reply(r)
        assert first["ok"] and first["id"] == 1
        assert second["error"]["code"] == "bad_frame"
        assert await read_reply(r) is None
    serve(tmp_path, ServerLimits(), body)


def test_connection_limit_answers_busy(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        conns = [await asyncio.open_unix_connection(path) for _ in range(2)]
        r3, _w3 = await asyncio.open_unix_connection(path)
        reply = await read_reply(r3)
        assert reply["error"]["code"] == "busy" and "limit 2" in reply["error"]["message"]
        assert await read_reply(r3) is None
        r1, w1 = conns[0]
        w1.write(frame({"v": 1, "id": 1, "op": "now"}))
        assert (await read_reply(r1))["ok"]
        assert server.rejected == 1
        w1.close()
        await asyncio.sleep(0.05)
        r4, w4 = await asyncio.open_unix_connection(path)  # a slot is free again
        w4.write(frame({"v": 1, "id": 4, "op": "now"}))
        assert (await read_reply(r4))["id"] == 4
    serve(tmp_path, ServerLimits(max_connections=2, uid_connection_share=1.0), body)


def test_oversize_frame_refused_before_reading_it(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(struct.pack(">I", 200))  # only the header: the limit is known from it
        reply = await read_reply(r)
        assert reply["error"]["code"] == "frame_too_large" and "100" in reply["error"]["message"]
        assert await read_reply(r) is None
    serve(tmp_path, ServerLimits(max_frame_bytes=100), body)


def test_idle_connection_closed(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(frame({"v": 1, "id": 1, "op": "now"}))
        assert (await read_reply(r))["ok"]
        assert await read_reply(r) is None  # closed silently after 0.2 s idle
        assert server.active == 0
    serve(tmp_path, ServerLimits(idle_timeout_s=0.2), body)


def test_trickled_frame_times_out(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(struct.pack(">I", 50) + b"\x80")  # 1 of 50 bytes, then nothing
        reply = await read_reply(r)
        assert reply["error"]["code"] == "bad_frame" and "incomplete" in reply["error"]["message"]
        assert await read_reply(r) is None
    serve(tmp_path, ServerLimits(frame_timeout_s=0.2, idle_timeout_s=30), body)


def test_close_with_clients_attached(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        clients = [await asyncio.open_unix_connection(path) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert server.active == 3
        await server.close()
        for r, _ in clients:
            assert await read_reply(r) is None
        assert server.active == 0
    serve(tmp_path, ServerLimits(), body)


def test_client_that_never_reads_does_not_grow_memory_unbounded(tmp_path: Path) -> None:
    async def body(path: str, server: SocketServer) -> None:
        _r, w = await asyncio.open_unix_connection(path)
        req = frame({"v": 1, "id": 1, "op": "status"}) * 2000
        for _ in range(20):  # 40 000 requests, replies never read
            w.write(req)
            await asyncio.sleep(0.01)
        (conn,) = server.connections
        assert conn.transport.get_write_buffer_size() < 4 << 20
        assert conn.transport.is_reading() is False  # paused until the client reads
        w.close()
    serve(tmp_path, ServerLimits(), body)
