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

Between local users (issue 14; docs/robustness.md): connections are accepted here, not by
asyncio's server, so one over a cap is refused with a cached ``busy`` frame without ever
getting a transport; every piece of loop time spent for a uid (answering, writing, refusing
its surplus connections, its ``at`` jobs) is charged to it, per pass of the loop and per
20 ms window, and a uid over its share waits for the next pass or window while others are
served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from chronotickd.workpool import WorkPool

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
    uid_connection_share: float = 0.25  # one uid may hold this share of max_connections
    max_pipelined: int = 16  # frames one connection has answered per event-loop pass
    heavy_queue: int = 16  # `at` requests queued on the work pool before `busy`

    @property
    def max_connections_per_uid(self) -> int:
        return max(1, int(self.max_connections * self.uid_connection_share))


# A uid's share of one pass of the event loop: this much time answering its frames. Beyond,
# its connections wait in a per-uid queue for the next pass, so a flood from one uid adds at
# most about this much to another uid's latency, however many connections it holds.
UID_PASS_SLICE_S = 50e-6
# ... and over a window of UID_WINDOW_S, while another uid was served in it too, a uid that
# used twice as much of it as any other may use at most UID_WINDOW_SHARE of the window: beyond,
# its connections wait for the next window (a busy client is never held back for a flood that
# was held back first, and two busy clients share). Slices per pass keep each pass short; the
# window share keeps the daemon from being busy all the time on one uid's behalf. A daemon
# that never sleeps loses the scheduler's preference for a task that mostly waits, and on a
# loaded machine every other client then waits for a CPU time slice (milliseconds) rather
# than for a pass of the loop. Alone, a uid may use it all.
UID_WINDOW_S = 0.02
UID_WINDOW_SHARE = 0.1  # 2 ms of each 20 ms window
_perf = time.perf_counter
# Accepting: at most ACCEPT_BATCH connections per wake-up of the listening socket, and refusals
# (connections over a cap) are charged to the refused uid's share of the pass like its
# requests, so a connect storm is worked off in slices between everyone's requests. Over a
# longer time refusals may take at most REFUSAL_CPU_SHARE of the loop (a token bucket of
# REFUSAL_BURST_S): beyond, accepting pauses and the storm waits in the kernel's listen queue
# (its connect() calls block there) while the loop serves the connections it has. A uid
# reconnecting in a loop thus cannot keep the daemon busy, which on a loaded machine would
# also cost every other client the scheduler's preference for a task that mostly sleeps.
# The listen queue stays short: connectors beyond it wait in the kernel's FIFO of blocked
# connect() calls (chronotick_client connects that way), so a newcomer waits for the few
# queued ahead of it rather than for thousands.
ACCEPT_BATCH = 16
LISTEN_BACKLOG = 128
REFUSAL_CPU_SHARE = 0.1
# What an admitted connection costs the loop beyond its requests: transport, protocol and
# task set up, then torn down (~100 µs measured with py-spy). Charged to its uid at accept, so
# a uid that connects and disconnects in a loop below its cap (every connection admitted) is
# held to its share like one that floods requests.
ADMIT_COST_S = 100e-6
REFUSAL_BURST_S = 0.005
ACCEPT_PAUSE_MAX_S = 0.05
ACCEPT_RETRY_S = 0.5  # out of file descriptors: stop accepting this long
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _echo_id(req: dict) -> int | str | None:
    req_id = req.get("id")
    return req_id if type(req_id) in (int, str) else None


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


def peer_uid(sock: socket.socket) -> int:
    """Just the uid of the peer (one getsockopt): what the accept path needs; -1 unknown."""
    try:
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                             _UCRED.size))[1]
    except OSError:
        return -1


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
    old = os.umask(0o777 & ~mode)  # bind creates the file with `mode` already
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    try:  # never through a symlink someone swapped in after bind (it could point anywhere)
        os.chmod(path, mode, follow_symlinks=False)
    except (NotImplementedError, OSError) as exc:
        sock.close()
        raise OSError(f"{path} changed under us after bind (not our socket any more: "
                      f"{getattr(exc, 'strerror', None) or exc}); make its directory writable "
                      "by chronotickd only") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Connection(asyncio.Protocol):
    """One client connection; replies are written from ``data_received`` itself.

    Fairness (issue 14): a connection answers at most ``max_pipelined`` frames per pass of
    the event loop and its uid spends at most ``UID_PASS_SLICE_S`` answering; beyond, the
    connection stops reading (the rest waits in the kernel's socket buffer, not in our memory)
    and queues behind its uid's other connections for the next pass (``SocketServer.defer``),
    after everyone else had their turn. A heavy op (``at``) is answered here when the published
    state already holds what it needs (``Handlers.light_frame``) and goes to the work pool
    otherwise; until the pool's reply is back the connection reads nothing more, so replies
    keep the order of the requests.
    """

    def __init__(self, server: SocketServer, admitted: int | None = None) -> None:
        self.server = server
        self.admitted = admitted  # uid whose reservation at accept this connection holds
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.last_active = time.monotonic()
        self.frame_started: float | None = None  # when the incomplete frame in buf began
        self.closing = False
        self.close_started: float | None = None  # when we began closing (flush deadline)
        self.write_paused_at: float | None = None  # when the client stopped taking replies
        self.peer = Peer(-1, -1, -1, ())
        self.reply_frame = server.handlers.reply_frame
        self.paused: set[str] = set()  # why reading is paused: write, yield, heavy
        self.yielded = False  # used up this pass's share; resumes next pass
        self.waiting = False  # a heavy request is on the work pool

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = peer_credentials(transport.get_extra_info("socket"))
        srv = self.server
        if self.admitted is not None:
            srv.admitted(self.admitted)
            self.admitted = None
        srv.active += 1
        srv.connections.add(self)
        uid = self.peer.uid
        srv.per_uid[uid] = srv.per_uid.get(uid, 0) + 1
        # the accept path (``SocketServer._accept_ready``) refuses over-cap connections before
        # they get this far; this check covers connections handed over any other way
        refusal = srv.refusal(uid, srv.active - 1, srv.per_uid[uid] - 1)
        if refusal is not None:
            self._close_after([refusal])
        elif uid in srv._throttled:  # its uid is over its window share: read it next window
            self._yield()

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        srv.active -= 1
        srv.connections.discard(self)
        left = srv.per_uid.get(self.peer.uid, 1) - 1
        if left > 0:
            srv.per_uid[self.peer.uid] = left
        else:
            srv.per_uid.pop(self.peer.uid, None)
            srv._frame_cost.pop(self.peer.uid, None)
        self.closing = True

    def _pause(self, why: str) -> None:
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()  # idempotent
        self.paused.add(why)

    def _unpause(self, why: str) -> None:
        self.paused.discard(why)
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # the client does not read its replies: stop reading
        self.write_paused_at = _monotonic()
        self._pause("write")

    def resume_writing(self) -> None:
        self.write_paused_at = None
        self._unpause("write")

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = now = _monotonic()
        max_frame = self.server.limits.max_frame_bytes  # read per call: `reload` may change it
        if not self.buf and len(data) > 4 and not (self.waiting or self.yielded):
            # the usual case, one whole request per read: no buffering, no list of replies
            (length,) = _unpack_header(data)
            srv = self.server
            if len(data) == 4 + length and length <= max_frame and srv.has_budget(self.peer.uid):
                began = _perf()
                frame, last = self._answer(data[4:])
                if frame is not None:
                    if last:
                        self._close_after([frame])
                    else:
                        self.transport.write(frame)  # type: ignore[union-attr]
                srv.charge_frame(self.peer.uid, _perf() - began)  # the write included
                return
        self.buf += data
        self._process(now)

    def _process(self, now: float) -> None:
        """Answer the complete frames in ``buf``, within this pass's share."""
        if self.waiting or self.yielded or self.closing:
            return
        srv = self.server
        lim = srv.limits
        max_frame = lim.max_frame_bytes
        buf = self.buf
        replies: list[bytes] = []
        pos = served = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _unpack_header(buf, pos)
            if length > max_frame:
                srv.bad_frames += 1
                replies.append(encode(error_reply(
                    None, E_TOO_LARGE, f"frame of {length} bytes over the {max_frame} limit")))
                self._close_after(replies)
                return
            if end - pos - 4 < length:
                break
            if served >= lim.max_pipelined or not srv.has_budget(self.peer.uid):
                self._yield()
                break
            began = _perf()
            frame, last = self._answer(bytes(buf[pos + 4 : pos + 4 + length]))
            srv.charge_frame(self.peer.uid, _perf() - began)
            pos += 4 + length
            served += 1
            if frame is None:
                break  # on the work pool: the rest waits for its reply
            replies.append(frame)
            if last:
                self._close_after(replies)
                return
        if pos:
            del buf[:pos]
        if not buf or self.waiting or self.yielded:
            self.frame_started = None  # nothing half-sent, or the delay is ours
        elif pos or self.frame_started is None:
            self.frame_started = now
        if replies:
            began = _perf()
            self.transport.write(b"".join(replies))  # type: ignore[union-attr]
            srv.charge(self.peer.uid, _perf() - began)

    def _yield(self) -> None:
        """This pass's share is used up: stop reading, carry on in the next pass."""
        self.yielded = True
        self.server.yields += 1
        self._pause("yield")
        self.server.defer(self)

    def _next_pass(self) -> None:
        self.yielded = False
        if self.closing:
            return
        self._process(_monotonic())
        if not self.yielded:
            self._unpause("yield")

    def _answer(self, body: bytes) -> tuple[bytes | None, bool]:
        """(reply frame, whether the connection must close after it) for one request body;
        frame None: the request went to the work pool (``_heavy_done`` answers it)."""
        try:
            req = decode_body(body)
        except ProtocolError as exc:
            self.server.bad_frames += 1
            return encode(error_reply(None, exc.code or E_BAD_FRAME, exc.message)), True
        self.server.served += 1
        handlers = self.server.handlers
        try:
            if handlers.is_heavy(req):
                # answered here when the state has what it needs (arithmetic, charged to the
                # uid like any request); a fit goes to the work pool
                frame = handlers.light_frame(req, self.peer)
                if frame is None:
                    return self._submit(req), False
            else:
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
            return encode(error_reply(_echo_id(req), E_INTERNAL, "internal error")), True

    def _submit(self, req: dict) -> bytes | None:
        """Hand a heavy request to the work pool; a ``busy`` frame when it is full."""
        handlers, peer = self.server.handlers, self.peer
        if not self.server.pool.running:  # not started (tests drive connections by hand)
            return self.reply_frame(req, peer)
        if self.server.pool.submit(peer.uid, lambda: handlers.handle(req, peer),
                                   lambda reply, error: self._heavy_done(req, reply, error)):
            self.waiting = True
            self._pause("heavy")
            return None
        return encode(error_reply(_echo_id(req), E_BUSY,
                                  f"too many {req.get('op')!s:.20} requests queued (limit "
                                  f"server.heavy_queue = {self.server.pool.queue_size}); "
                                  "retry later"))

    def _heavy_done(self, req: dict, reply: dict | None, error: BaseException | None) -> None:
        """The work pool's answer (on the loop): send it, then carry on with the buffer."""
        self.waiting = False
        if self.closing or self.transport is None:
            return
        if error is not None or reply is None:
            log.error("unexpected error serving %s: %r", req.get("op"), error)
            frame = encode(error_reply(_echo_id(req), E_INTERNAL, "internal error"))
        else:
            frame = self.server.handlers.pack(reply)
            if len(frame) > MAX_FRAME_BYTES + 4:
                frame = encode(error_reply(None, E_TOO_LARGE, "reply would exceed the frame "
                                           "limit"))
        self.transport.write(frame)
        self._unpause("heavy")
        self._process(_monotonic())

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
        self.pool = WorkPool(limits.heavy_queue)
        self.pool.on_cost = self.charge  # a uid's jobs count against its share of the loop
        self.limits = limits  # replaced whole by `reload`; connections read it per frame
        self.active = 0
        self.served = 0
        self.rejected = 0
        self.rejected_uid = 0
        self.bad_frames = 0
        self.timeouts = 0
        self.yields = 0
        self.connections: set[_Connection] = set()
        self.per_uid: dict[int, int] = {}  # uid → open connections
        self._pass_used: dict[int, float] = {}  # uid → seconds answering in this loop pass
        self._frame_cost: dict[int, float] = {}  # uid → what its last answered frame cost
        self._deferred: dict[int, collections.deque[_Connection]] = {}
        self._pass_scheduled = False
        self._window_used: dict[int, float] = {}  # uid → seconds in this window
        self._throttled: set[int] = set()  # uids over their window share
        self.throttled = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None  # the listening socket
        self._adopting = 0  # admitted, transport not yet made
        self._reserved: dict[int, int] = {}  # uid → of those
        self._refusals: dict[tuple[int, ...], bytes] = {}  # encoded busy frames
        self._tokens = REFUSAL_BURST_S  # seconds of loop time refusals may still take
        self._tokens_at = _perf()
        self.accept_pauses = 0
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def limits(self) -> ServerLimits:
        return self._limits

    @limits.setter
    def limits(self, value: ServerLimits) -> None:
        self._limits = value
        self.pool.queue_size = value.heavy_queue
        self.pool.per_uid = max(1, value.heavy_queue // 8)

    def has_budget(self, uid: int) -> bool:
        """Whether ``uid`` may have another frame answered in this pass of the loop: its first
        always (every uid makes progress), the next only if it should still fit in the slice
        at what the uid's last frame cost. (Checking only what was used so far let a pass run
        to the slice plus a whole frame: with `at` frames of ~50 µs, 100–200 µs passes that
        another uid's request waited behind.)"""
        if self._loop is None:
            return True
        if uid in self._throttled:
            return False
        used = self._pass_used.get(uid, 0.0)
        return used == 0.0 or used + self._frame_cost.get(uid, 0.0) <= UID_PASS_SLICE_S

    def charge_frame(self, uid: int, seconds: float) -> None:
        """``charge`` for one answered frame, remembered as the uid's expected next one."""
        self._frame_cost[uid] = seconds
        self.charge(uid, seconds)

    def charge(self, uid: int, seconds: float) -> None:
        """``uid`` had ``seconds`` of the loop (or of a worker) on its behalf."""
        used = self._pass_used
        loop = self._loop
        if loop is None:
            return
        if not used:
            loop.call_soon(used.clear)  # runs before the next pass's reads
        used[uid] = used.get(uid, 0.0) + seconds
        window = self._window_used
        if not window:
            loop.call_later(UID_WINDOW_S, self._new_window)
        total = window[uid] = window.get(uid, 0.0) + seconds
        if total > UID_WINDOW_S * UID_WINDOW_SHARE and len(window) > 1 \
                and uid not in self._throttled \
                and total >= 2 * max(v for u, v in window.items() if u != uid):
            self._throttled.add(uid)
            self.throttled += 1
            # none of its busy connections is read until the next window: each read of one
            # would cost the loop a wake-up, a recv and buffering, for nothing to be answered
            # (idle ones stay as they are: pausing and resuming them costs two epoll_ctl each)
            recent = _monotonic() - UID_WINDOW_S
            for conn in list(self.connections):
                if conn.peer.uid == uid and conn.last_active >= recent \
                        and not (conn.yielded or conn.closing):
                    conn._yield()

    def _new_window(self) -> None:
        self._window_used.clear()
        if self._throttled:
            self._throttled.clear()
            if self._deferred and not self._pass_scheduled:
                self._pass_scheduled = True
                asyncio.get_running_loop().call_soon(self._serve_deferred)

    def defer(self, conn: _Connection) -> None:
        """Queue a connection that used up its share; ``_next_pass`` serves the queues."""
        self._deferred.setdefault(conn.peer.uid, collections.deque()).append(conn)
        if not self._pass_scheduled and conn.peer.uid not in self._throttled:
            self._pass_scheduled = True
            asyncio.get_running_loop().call_soon(self._serve_deferred)

    def _serve_deferred(self) -> None:
        """Each uid's queued connections in turn, while the uid has budget in this pass; a
        uid over its window share waits for ``_new_window``."""
        self._pass_scheduled = False
        again = False
        for uid, waiting in list(self._deferred.items()):
            while waiting and self.has_budget(uid):
                waiting.popleft()._next_pass()  # may queue itself again, at the end
            if not waiting:
                del self._deferred[uid]
            elif uid not in self._throttled:
                again = True
        if again and not self._pass_scheduled:
            self._pass_scheduled = True
            asyncio.get_running_loop().call_soon(self._serve_deferred)

    def refusal(self, uid: int, active: int, of_uid: int) -> bytes | None:
        """The ``busy`` frame for one more connection from ``uid`` when ``active`` are open
        (``of_uid`` of them its), counted; None when it may connect. Frames are built once
        per (limit, uid): a refusal storm costs no encoding."""
        lim = self.limits
        if active >= lim.max_connections:
            self.rejected += 1
            key: tuple[int, ...] = (lim.max_connections,)
        elif of_uid >= lim.max_connections_per_uid:
            self.rejected_uid += 1
            key = (lim.max_connections, lim.max_connections_per_uid, uid)
        else:
            return None
        frame = self._refusals.get(key)
        if frame is None:
            if len(key) == 1:
                msg = (f"too many connections (limit {lim.max_connections}); retry later")
            else:
                msg = (f"too many connections from uid {uid} (limit "
                       f"{lim.max_connections_per_uid}: server.uid_connection_share of "
                       "server.max_connections); close some or retry later")
            if len(self._refusals) >= 1024:  # one per uid seen: bounded all the same
                self._refusals.clear()
            frame = self._refusals[key] = encode(error_reply(None, E_BUSY, msg))
        return frame

    def _accept_ready(self) -> None:
        """Accept a batch of waiting connections; refuse those over a cap right here.

        A refused connection costs accept, one getsockopt, one non-blocking send of a
        pre-encoded ``busy`` frame and close: no transport, protocol or task. A uid that
        reconnects in a loop (it is over its cap, so every attempt is refused) thus costs the
        loop a few microseconds per attempt, in batches of ``ACCEPT_BATCH`` per pass, instead
        of the ~100 µs of a full asyncio connection set up and torn down. A connection whose
        first bytes already doom it (``_doomed``) is answered and closed the same way.
        """
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        began = _perf()
        self._tokens = min(REFUSAL_BURST_S,
                           self._tokens + (began - self._tokens_at) * REFUSAL_CPU_SHARE)
        self._tokens_at = began
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    log.warning("cannot accept connections: %s; retrying in %g s",
                                exc.strerror, ACCEPT_RETRY_S)
                    self._pause_accepting(ACCEPT_RETRY_S)
                    return
                continue  # ECONNABORTED and the like: that one connection is gone
            uid = peer_uid(conn)
            refusal = self.refusal(uid, self.active + self._adopting,
                                   self.per_uid.get(uid, 0) + self._reserved.get(uid, 0))
            if refusal is None:
                refusal = self._doomed(conn)
            if refusal is None:
                conn.setblocking(False)
                self._adopting += 1
                self._reserved[uid] = self._reserved.get(uid, 0) + 1
                loop.create_task(self._adopt(conn, uid))
                self.charge(uid, ADMIT_COST_S)
                if uid in self._throttled:  # over its window share: accept in the next window
                    self._pause_accepting(UID_WINDOW_S)
                    return
                began = _perf()
                continue
            if refusal:
                with contextlib.suppress(OSError):
                    conn.send(refusal, socket.MSG_DONTWAIT)
            conn.close()
            now = _perf()
            self.charge(uid, now - began)
            self._tokens -= now - began
            began = now
            if self._tokens < 0:  # refusals had their share of the loop: pause accepting
                self.accept_pauses += 1
                # (at most ACCEPT_PAUSE_MAX_S: one refusal stretched by preemption must not
                # keep newcomers waiting long)
                self._pause_accepting(min(-self._tokens / REFUSAL_CPU_SHARE,
                                          ACCEPT_PAUSE_MAX_S))
                return
            if uid in self._throttled:  # over its window share: accept in the next window
                self._pause_accepting(UID_WINDOW_S)
                return
            if not self.has_budget(uid):
                return  # the rest in the next pass (the socket is still readable)

    def _doomed(self, conn: socket.socket) -> bytes | None:
        """The last frame for a connection whose fate its first bytes already decide, before
        it gets a transport; None: set it up.

        A client that connected, wrote and hung up before we accepted it has its bytes waiting
        (peeked, not consumed). A length prefix over ``max_frame_bytes`` closes the connection
        with ``too_large`` whatever follows, exactly as ``_Connection`` would after the full
        set-up (~100 µs of the loop, for nothing); a connection that sent nothing and hung up
        needs no reply. Anything else (usually: nothing sent yet) is set up as usual.
        """
        try:
            head = conn.recv(4, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: nothing yet (the usual case); others: set up
            return None
        if not head:
            return b""  # hung up without a word
        if len(head) < 4:
            return None
        (length,) = _unpack_header(head)
        max_frame = self.limits.max_frame_bytes
        if length <= max_frame:
            return None
        self.bad_frames += 1
        with contextlib.suppress(OSError):  # unread bytes at close would reset the reply
            conn.recv(65536, socket.MSG_DONTWAIT)
        return encode(error_reply(None, E_TOO_LARGE,
                                  f"frame of {length} bytes over the {max_frame} limit"))

    async def _adopt(self, conn: socket.socket, uid: int) -> None:
        """Give an admitted connection its transport and protocol (``connection_made``)."""
        loop = self._loop
        assert loop is not None
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(self, admitted=uid))
            return made[0]
        try:
            await loop.connect_accepted_socket(protocol, conn)
        except Exception as exc:  # the peer went away in between, or we are closing
            log.debug("accepted connection lost before it was set up: %r", exc)
            conn.close()
            if not made or made[0].admitted is not None:
                self.admitted(uid)

    def admitted(self, uid: int) -> None:
        """An admitted connection is set up (or gone): it no longer holds a reservation."""
        self._adopting -= 1
        left = self._reserved.get(uid, 1) - 1
        if left > 0:
            self._reserved[uid] = left
        else:
            self._reserved.pop(uid, None)

    def _pause_accepting(self, seconds: float) -> None:
        """Leave waiting connections in the kernel's queue for ``seconds``."""
        loop, sock = self._loop, self._sock
        assert loop is not None and sock is not None
        loop.remove_reader(sock.fileno())

        def resume() -> None:
            if self._sock is not None:
                loop.add_reader(self._sock.fileno(), self._accept_ready)
        loop.call_later(max(seconds, 0.001), resume)

    def counters(self) -> dict[str, int]:
        """For `status`: how often limits were enforced."""
        return {"rejected": self.rejected, "rejected_uid": self.rejected_uid,
                "bad_frames": self.bad_frames, "timeouts": self.timeouts,
                "yields": self.yields, "accept_pauses": self.accept_pauses,
                "throttled": self.throttled,
                **{f"heavy_{k}": v for k, v in self.pool.describe().items()}}

    async def start(self, sock: socket.socket,
                    spawn: Callable[[str, Callable[[], None]], Any] | None = None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.pool.start(loop, spawn)
        self._sock = sock
        sock.setblocking(False)
        sock.listen(LISTEN_BACKLOG)  # again: a socket from systemd comes with its own backlog
        loop.add_reader(sock.fileno(), self._accept_ready)
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
        self.pool.stop()
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.closing = True
                conn.transport.close()
        await asyncio.sleep(0)  # let the transports' close callbacks run
