"""Local abuse limits (issue 14 item 4) in-process on a real Unix socket: the per-uid
connection cap, the per-pass share of a pipelining connection, the bounded work pool that
runs `at` off the event loop, the unprivileged default caller, thread supervision and the
watchdog check it feeds; and the file-safety rules of item 6 (socket chmod, state dir)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from test_server import frame, read_reply, serve

from chronotickd import server as server_mod
from chronotickd import statefile
from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement
from chronotickd.handlers import LOCAL_ROOT, Handlers
from chronotickd.publish import Publisher
from chronotickd.server import ServerLimits, SocketServer, bind_unix_socket
from chronotickd.supervise import Supervisor


def test_per_uid_connection_cap(tmp_path: Path) -> None:
    """One uid holds at most uid_connection_share of max_connections; the next is `busy`."""
    async def body(path: str, server: SocketServer) -> None:
        held = [await asyncio.open_unix_connection(path) for _ in range(2)]
        for i, (r, w) in enumerate(held):
            w.write(frame({"v": 1, "id": i, "op": "now"}))
            assert (await read_reply(r))["ok"]
        r3, _w3 = await asyncio.open_unix_connection(path)
        reply = await read_reply(r3)
        assert reply["error"]["code"] == "busy"
        assert f"uid {os.geteuid()}" in reply["error"]["message"]
        assert "server.uid_connection_share" in reply["error"]["message"]
        assert server.rejected_uid == 1 and server.rejected == 0
        held[0][1].close()
        await asyncio.sleep(0.05)
        r4, w4 = await asyncio.open_unix_connection(path)  # a slot is free again
        w4.write(frame({"v": 1, "id": 4, "op": "now"}))
        assert (await read_reply(r4))["ok"]
    serve(tmp_path, ServerLimits(max_connections=8, uid_connection_share=0.25), body)


def test_pipelining_flood_waits_its_turn(tmp_path: Path) -> None:
    """A connection pipelining thousands of frames is answered in order, a share per pass;
    another connection's request is answered while the flood is still being worked off."""
    n = 20000

    async def body(path: str, server: SocketServer) -> None:
        ra, wa = await asyncio.open_unix_connection(path)
        rb, wb = await asyncio.open_unix_connection(path)
        wa.write(b"".join(frame({"v": 1, "id": i, "op": "now"}) for i in range(n)))
        await asyncio.sleep(0.01)  # the flood has begun
        wb.write(frame({"v": 1, "id": -1, "op": "now"}))
        assert (await read_reply(rb))["id"] == -1
        served_when_b_answered = server.served
        ids = [(await read_reply(ra))["id"] for _ in range(n)]
        assert ids == list(range(n))
        assert served_when_b_answered < n + 1, "the flood was served whole before the other"
        assert server.yields > 0
    serve(tmp_path, ServerLimits(max_pipelined=4, max_frame_bytes=4096), body)


def _slow_at(gate: threading.Event) -> Any:
    def at(req: dict[str, Any]) -> dict[str, Any]:
        gate.wait(5)
        return {"slow": True}
    return at


def test_at_runs_off_the_loop_in_order_and_busy_when_full(tmp_path: Path) -> None:
    gate = threading.Event()

    async def body(path: str, server: SocketServer) -> None:
        server.handlers.ops["at"] = _slow_at(gate)
        r1, w1 = await asyncio.open_unix_connection(path)
        # a heavy request followed by a cheap one on the same connection: replies in order
        w1.write(frame({"v": 1, "id": 1, "op": "at", "system_time_ns": 5})
                 + frame({"v": 1, "id": 2, "op": "now"}))
        await asyncio.sleep(0.05)
        # while `at` runs, the loop still serves others at once ...
        r2, w2 = await asyncio.open_unix_connection(path)
        w2.write(frame({"v": 1, "id": 3, "op": "now"}))
        assert (await read_reply(r2))["ok"]
        # ... and a second `at` from the same uid finds the (size 1) queue full: busy
        w2.write(frame({"v": 1, "id": 4, "op": "at", "system_time_ns": 5}))
        busy = await read_reply(r2)
        assert busy["id"] == 4 and busy["error"]["code"] == "busy"
        assert "server.heavy_queue" in busy["error"]["message"]
        gate.set()
        first, second = await read_reply(r1), await read_reply(r1)
        assert (first["id"], first["result"]) == (1, {"slow": True})
        assert second["id"] == 2 and second["ok"]
        assert server.pool.refused == 1 and server.pool.done == 1
    serve(tmp_path, ServerLimits(heavy_queue=1), body)


def test_at_answered_on_the_loop_once_its_fit_is_made(tmp_path: Path) -> None:
    """The first `at` near an instant fits a line on the work pool; the next ones near it are
    arithmetic on that fit and are answered on the loop, with the same reply."""
    e = Engine()  # epoch 0 and δ 0: raw, real and trace time are one
    for i in range(64):
        e.add(Measurement.from_ntp(1000.0 + i, 1e-3 + i * 1e-9, 1e-4))
    state = e.snapshot(1064.0)

    async def body(path: str, server: SocketServer) -> None:
        server.handlers.publisher.publish(clock=state)
        server.handlers.read_ns = lambda: (1064 * 10**9, 1064 * 10**9, 0)
        r, w = await asyncio.open_unix_connection(path)
        when = 1030 * 10**9 + 5 * 10**8
        replies = []
        for i in range(3):
            w.write(frame({"v": 1, "id": i, "op": "at", "system_time_ns": when}))
            replies.append(await read_reply(r))
        assert all(x["ok"] for x in replies)
        assert server.pool.done == 1, "only the first `at` needed the work pool"
        assert replies[1]["result"] == replies[2]["result"] == replies[0]["result"]
        assert server.handlers.op_counts["at"] == 3
    serve(tmp_path, ServerLimits(), body)


def count_connections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one for each protocol object (`_Connection`) the server makes."""
    made: list[int] = []
    real_init = server_mod._Connection.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(server_mod._Connection, "__init__", counting)
    return made


def test_refused_connections_cost_no_transport(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Over its cap, a uid's connections are refused at accept with the `busy` frame: no
    protocol object (transport, task) is made for them, so a reconnect loop stays cheap."""
    made = count_connections(monkeypatch)

    async def body(path: str, server: SocketServer) -> None:
        held = [await asyncio.open_unix_connection(path) for _ in range(2)]
        for i, (r, w) in enumerate(held):
            w.write(frame({"v": 1, "id": i, "op": "now"}))
            assert (await read_reply(r))["ok"]
        for _ in range(30):
            r, w = await asyncio.open_unix_connection(path)
            reply = await read_reply(r)
            assert reply["error"]["code"] == "busy"
            assert "server.uid_connection_share" in reply["error"]["message"]
            assert await read_reply(r) is None  # and closed
            w.close()
        assert server.rejected_uid == 30 and len(made) == 2
    serve(tmp_path, ServerLimits(max_connections=8, uid_connection_share=0.25), body)


@contextlib.asynccontextmanager
async def connect_storm(path: str) -> AsyncIterator[None]:
    """Another thread connects to ``path`` and hangs up, as fast as it can, while the body
    runs (a connection flood from one uid)."""
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                with contextlib.suppress(OSError):
                    s.connect(path)
    t = threading.Thread(target=storm, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(t.join, 5)


def test_doomed_connections_cost_no_transport(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that wrote an over-limit length prefix, or nothing, and hung up before it was
    accepted is answered (`too_large`) and closed at accept, with no protocol object made; a
    valid request already waiting at accept is not consumed by the look and is served."""
    made = count_connections(monkeypatch)

    async def body(path: str, server: SocketServer) -> None:
        loop = asyncio.get_running_loop()
        # blocking calls, the loop not yet run: all of it is queued before the server accepts
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.connect(path)
        bad.sendall((10**6).to_bytes(4, "big") + b"x" * 8)
        bad.shutdown(socket.SHUT_WR)
        mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mute.connect(path)
        mute.close()
        good = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        good.connect(path)
        good.sendall(frame({"v": 1, "id": 7, "op": "now"}))
        bad.setblocking(False)
        data = b""
        while chunk := await loop.sock_recv(bad, 4096):
            data += chunk
        bad.close()
        reply = msgpack.unpackb(data[4:])
        assert reply["error"]["code"] == "frame_too_large"
        r, w = await asyncio.open_unix_connection(sock=good)
        assert (await read_reply(r))["id"] == 7
        assert len(made) == 1, "only the good connection got a transport"
        assert server.bad_frames == 1
        w.close()
    serve(tmp_path, ServerLimits(), body)


def test_refusal_storm_pauses_accepting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals may take only a share of the loop: past it, accepting pauses (the storm waits
    in the kernel's queue) and the connections already open are still answered."""
    monkeypatch.setattr(server_mod, "REFUSAL_BURST_S", 1e-4)

    async def body(path: str, server: SocketServer) -> None:
        r, w = await asyncio.open_unix_connection(path)
        async with connect_storm(path):
            deadline = time.monotonic() + 5
            while server.accept_pauses < 3 and time.monotonic() < deadline:
                w.write(frame({"v": 1, "id": 1, "op": "now"}))
                assert (await read_reply(r))["ok"]
                await asyncio.sleep(0.01)
        assert server.accept_pauses >= 3 and server.rejected_uid > 0
        assert server.limits.max_connections_per_uid == 1
    serve(tmp_path, ServerLimits(max_connections=4, uid_connection_share=0.25), body)


def test_busy_uid_gets_a_window_share_only_while_another_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A uid pipelining without pause is held to its share of each window while another uid
    is being served, and is not held back at all when it is alone."""
    order = [2000, 1000, 2000]  # flood, other, flood alone
    at_accept, at_setup = iter(order), iter(order)

    def fake_peer(sock: Any) -> Any:
        return server_mod.Peer(1, next(at_setup), 1, ())

    monkeypatch.setattr(server_mod, "peer_uid", lambda sock: next(at_accept))
    monkeypatch.setattr(server_mod, "peer_credentials", fake_peer)
    n = 30000
    flood = b"".join(frame({"v": 1, "id": i, "op": "now"}) for i in range(n))

    async def drain(r: asyncio.StreamReader) -> None:
        for _ in range(n):
            assert (await read_reply(r))["ok"]

    async def body(path: str, server: SocketServer) -> None:
        ra, wa = await asyncio.open_unix_connection(path)
        rb, wb = await asyncio.open_unix_connection(path)
        wa.write(flood)
        reader = asyncio.create_task(drain(ra))
        while not reader.done():
            wb.write(frame({"v": 1, "id": 2, "op": "now"}))
            assert (await read_reply(rb))["ok"]
            await asyncio.sleep(0.001)
        await reader
        assert server.throttled > 0
        wb.close()
        wa.close()
        await asyncio.sleep(0.05)
        before = server.throttled
        rc, wc = await asyncio.open_unix_connection(path)  # uid 2000, alone now
        wc.write(flood)
        await drain(rc)
        assert server.throttled == before
    serve(tmp_path, ServerLimits(), body)


def test_busy_client_not_held_back_for_a_flood() -> None:
    """The window share holds back a uid only when it used twice as much as any other: the
    flood is held back; the other uid, busy too and served on while the flood waits, is not
    (it would be, were the rule "the most", once it overtook the held-back flood)."""
    class Loop:  # charge() only schedules; nothing needs to run here
        def call_soon(self, *a: Any) -> None: ...
        def call_later(self, *a: Any) -> None: ...

    server = SocketServer(Handlers(Publisher(Engine().snapshot(0.0))))
    server._loop = Loop()  # type: ignore[assignment]
    limit = server_mod.UID_WINDOW_S * server_mod.UID_WINDOW_SHARE
    server.charge(1000, 0.2 * limit)  # the client
    server.charge(2000, 1.1 * limit)  # the flood: over the share, > 2x the client
    assert server._throttled == {2000}
    server.charge(1000, 1.3 * limit)  # the client, served on: 1.5x the share, < 2x the flood
    assert server._throttled == {2000}
    server.charge(3000, 0.1 * limit)
    server.charge(1000, 1.0 * limit)  # now 2.5x the share and > 2x the flood's 1.1: held too
    assert server._throttled == {1000, 2000}
    alone = SocketServer(Handlers(Publisher(Engine().snapshot(0.0))))
    alone._loop = Loop()  # type: ignore[assignment]
    alone.charge(2000, 10 * limit)  # alone in the window: never held back
    assert not alone._throttled


def test_connection_churn_is_charged_to_its_uid(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A uid connecting and disconnecting in a loop below its cap (every connection admitted)
    pays for the set-up: it is held to its window share while another uid is served."""
    def uids() -> Any:
        yield 1000  # the other uid's connection comes first
        while True:
            yield 2000

    at_accept, at_setup = uids(), uids()
    monkeypatch.setattr(server_mod, "peer_uid", lambda sock: next(at_accept))
    monkeypatch.setattr(server_mod, "peer_credentials",
                        lambda sock: server_mod.Peer(1, next(at_setup), 1, ()))

    async def body(path: str, server: SocketServer) -> None:
        rb, wb = await asyncio.open_unix_connection(path)
        wb.write(frame({"v": 1, "id": 0, "op": "now"}))
        assert (await read_reply(rb))["ok"]
        async with connect_storm(path):
            deadline = time.monotonic() + 5
            while not server.throttled and time.monotonic() < deadline:
                wb.write(frame({"v": 1, "id": 1, "op": "now"}))
                assert (await read_reply(rb))["ok"]
                await asyncio.sleep(0.001)
        assert server.throttled > 0 and server.rejected_uid == 0
    serve(tmp_path, ServerLimits(max_connections=256, uid_connection_share=0.5), body)


def test_client_waits_in_a_full_listen_queue(tmp_path: Path) -> None:
    """chronotick_client's connect waits its turn while the daemon's listen queue is full (a
    connect storm), up to its timeout, instead of failing at once with EAGAIN."""
    from chronotick_client import Client
    from chronotick_client.client import DaemonUnavailable

    path = str(tmp_path / "q.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    filler = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        filler[0].setblocking(False)
        filler[0].connect(path)  # the queue holds one: now it is full
        filler[1].setblocking(False)
        with pytest.raises(BlockingIOError):
            filler[1].connect(path)
        timer = threading.Timer(0.3, lambda: listener.accept()[0].close())
        timer.start()
        began = time.monotonic()
        sock = Client(path, timeout=3)._connect()
        waited = time.monotonic() - began
        sock.close()
        timer.join()
        assert 0.2 < waited < 3
        # the client's own connection fills the queue now; nobody accepts: a clear error
        # once the timeout has passed
        with pytest.raises(BlockingIOError):
            filler[1].connect(path)
        began = time.monotonic()
        with pytest.raises(DaemonUnavailable, match="connection queue stayed full"):
            Client(path, timeout=0.3)._connect()
        assert time.monotonic() - began >= 0.25
    finally:
        for s in filler:
            s.close()
        listener.close()


def test_default_caller_is_unprivileged() -> None:
    h = Handlers(Publisher(Engine().snapshot(0.0)))
    h.admin_ops["reset"] = lambda req: {"reset": "done"}
    req = {"v": 1, "id": 1, "op": "reset"}
    assert h.handle(req)["error"]["code"] == "forbidden"
    assert h.handle(req, LOCAL_ROOT)["result"] == {"reset": "done"}


def test_supervisor_restarts_then_gives_up() -> None:
    sup = Supervisor(max_deaths=3, window_s=60, backoff_s=0.01)
    runs: list[int] = []

    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    sup.spawn("flaky", flaky)
    sup.join("flaky", 2)
    d = sup.describe()["flaky"]
    assert len(runs) == 2 and d["restarts"] == 1 and not d["given_up"]
    assert d["last_error"] == "RuntimeError: first run fails" and sup.healthy()

    def broken() -> None:
        raise ValueError("always")

    sup.spawn("broken", broken)
    sup.join("broken", 2)
    d = sup.describe()["broken"]
    assert d["given_up"] and d["restarts"] == 2 and not d["alive"]
    assert not sup.healthy()


def test_watchdog_withheld_when_supervisor_gives_up() -> None:
    from chronotickd.service import watchdog as wd

    sent: list[str] = []

    class Rec:
        def notify(self, *fields: str) -> bool:
            sent.extend(fields)
            return True

    healthy = [True]
    dog = wd.Watchdog(Rec(), 0.02)  # type: ignore[arg-type]
    dog.checks.append(lambda: healthy[0])

    async def scenario() -> tuple[int, int]:
        dog.start()
        await asyncio.sleep(0.1)
        before = len(sent)
        healthy[0] = False
        await asyncio.sleep(0.03)
        n = len(sent)
        await asyncio.sleep(0.15)
        dog.stop()
        return before, len(sent) - n

    before, after = asyncio.run(scenario())
    assert before >= 3 and after == 0


def test_engine_thread_death_is_counted_and_restarted(tmp_path: Path) -> None:
    """A daemon whose engine raises once keeps publishing; `status` shows the restart."""
    from chronotickd.config import Config
    from chronotickd.daemon import Daemon

    cfg = Config({"ntp.servers": [], "state_dir": str(tmp_path / "state"),
                  "socket": str(tmp_path / "d.sock")})
    daemon = Daemon(cfg)
    boom = [True]
    real = daemon._observe_clock

    def step_check() -> bool:
        if boom:
            boom.clear()
            raise RuntimeError("injected engine fault")
        return real()

    daemon._observe_clock = step_check  # type: ignore[method-assign]
    daemon.supervisor.spawn("engine", daemon._engine_loop)  # as Daemon._main does
    try:
        deadline = time.monotonic() + 10
        threads: dict[str, Any] = {}
        while time.monotonic() < deadline:
            threads = daemon.publisher.current.status.get("threads", {})
            if threads.get("engine", {}).get("restarts"):
                break
            time.sleep(0.1)
        eng = threads["engine"]
        assert eng["restarts"] == 1 and eng["alive"] and not eng["given_up"]
        assert "injected engine fault" in eng["last_error"]
        assert daemon.supervisor.healthy()
    finally:
        daemon.stop()
        daemon.supervisor.stop()
        daemon.supervisor.join("engine", 5)


def test_socket_chmod_never_follows_a_swapped_in_symlink(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """If the socket path becomes a symlink between bind and chmod, the target keeps its
    mode and binding fails with a message."""
    victim = tmp_path / "victim"
    victim.write_text("x")
    os.chmod(victim, 0o600)
    path = tmp_path / "s.sock"

    class Swapping(socket.socket):
        def bind(self, address: Any) -> None:
            super().bind(address)
            os.unlink(address)
            os.symlink(victim, address)

    monkeypatch.setattr(server_mod.socket, "socket", Swapping)
    with pytest.raises(OSError, match="changed under us"):
        bind_unix_socket(str(path), 0o666)
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600


def test_socket_mode_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = bind_unix_socket(str(path), 0o660)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    finally:
        sock.close()


def test_state_dir_created_0750_or_tighter(tmp_path: Path) -> None:
    d = tmp_path / "a" / "state"
    old = os.umask(0)
    try:
        statefile.save(d, {k: 0.0 for k in statefile.REQUIRED})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) & ~0o750 == 0
