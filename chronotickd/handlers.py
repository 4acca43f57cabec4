"""Request dispatch: one function per op, each plain arithmetic on the published state."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from chronotick_client.protocol import (
    E_BAD_REQUEST,
    E_BAD_VERSION,
    E_FORBIDDEN,
    E_INTERNAL,
    HEADER,
    PROTOCOL_VERSION,
    error_reply,
)
from chronotickd.core.state import FitNeeded
from chronotickd.core.timebase import ClockReading
from chronotickd.publish import Publisher
from chronotickd.sources.clocks import read_ns as read_clocks_ns
from chronotickd.tracking import tracking_result
from chronotickd.wire import answer_to_wire, now_reply_frame, values_to_wire

MAX_FUTURE_S = 86400.0
MAX_ID_CHARS = 256  # a request id is echoed back; a huge one could not fit in the reply
ADMIN_OPS = ("reload", "poll_now", "reset")
# ops costing more than arithmetic (``at`` fits a local line: ~2 ms): the server runs them on
# its bounded work pool (chronotickd/workpool.py), never on the event loop
HEAVY_OPS = frozenset({"at"})


class BadRequest(ValueError):
    pass


class AdminFailed(RuntimeError):
    """An admin op that could not be carried out; ``code`` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection (SO_PEERCRED; uid -1 when unknown)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


UNPRIVILEGED = Peer(-1, -1, -1)  # the default caller: anyone; admin ops are refused
LOCAL_ROOT = Peer(0, 0, 0)  # in-process admin callers must pass this explicitly


def short(value: Any, limit: int = 60) -> str:
    """repr() cut to ``limit`` chars: error messages never echo a hostile payload whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(req: dict[str, Any], name: str) -> float:
    value = req.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number, got {short(value)}")
    return float(value)


class Handlers:
    """Maps a decoded request to a reply map. Never raises for client mistakes."""

    def __init__(self, publisher: Publisher,
                 read_ns: Callable[[], tuple[int, int, int]] = read_clocks_ns) -> None:
        self.publisher = publisher
        # (raw_ns, real_ns, width_ns): CLOCK_MONOTONIC_RAW and CLOCK_REALTIME read back to back
        # (chronotickd/sources/clocks.py); injectable for tests
        self.read_ns = read_ns
        self._packer = msgpack.Packer(use_bin_type=True)  # used from the event loop only
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "now": self.now,
            "status": self.status,
            "sources": self.sources,
            "future": self.future,
            "at": self.at,
            "tracking": self.tracking,
        }
        # Requests per op and error replies per code, for metrics (chronotickd/metrics.py).
        # Plain dict increments on the event loop: a few tens of ns, no lock (the scraper only
        # reads, and a value one request old is fine). Unknown ops count as "other" so a
        # hostile client cannot grow the label set.
        self.op_counts: dict[str, int] = dict.fromkeys([*self.ops, *ADMIN_OPS, "other"], 0)
        self.error_counts: dict[str, int] = {}
        # Admin ops: the daemon installs the callables (``Daemon`` wires reload/poll_now/
        # reset); only root or members of ``admin_gid`` may call them.
        self.admin_ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.admin_gid: int | None = None

    def reply_frame(self, req: dict[str, Any], peer: Peer = UNPRIVILEGED) -> bytes:
        """The whole reply frame (length prefix + msgpack body) for ``req``: what the server
        sends.

        ``now`` with an integer id (every real client) takes a hand-packed fast path that
        decodes to exactly what ``handle`` + msgpack give; everything else goes through
        ``handle``.
        """
        req_id = req.get("id")
        if req.get("op") == "now" and req.get("v") == PROTOCOL_VERSION and \
                type(req_id) is int and -(2**63) <= req_id < 2**64:
            self.op_counts["now"] += 1
            raw, real, width = self.read_ns()
            return now_reply_frame(req_id, real,
                                   *self.publisher.current.clock.answer_ns(raw, real, width))
        body = self._packer.pack(self.handle(req, peer))
        return HEADER.pack(len(body)) + body

    def is_heavy(self, req: dict[str, Any]) -> bool:
        op = req.get("op")
        return isinstance(op, str) and op in HEAVY_OPS and req.get("v") == PROTOCOL_VERSION

    def pack(self, reply: dict[str, Any]) -> bytes:
        """The frame of a reply map ``handle`` made (event loop only: one shared packer)."""
        body = self._packer.pack(reply)
        return HEADER.pack(len(body)) + body

    def is_admin(self, peer: Peer) -> bool:
        if peer.uid == 0:
            return True
        gid = self.admin_gid
        return gid is not None and peer.uid >= 0 and (peer.gid == gid or gid in peer.groups)

    def light_frame(self, req: dict[str, Any], peer: Peer = UNPRIVILEGED) -> bytes | None:
        """The reply frame for a heavy request (``is_heavy``) when arithmetic on the published
        state answers it: ``at`` near instants this state has already fitted a line for.
        None: it needs a fit, which the server's work pool runs (``handle``)."""
        try:
            return self.pack(self.handle(req, peer, cached_only=True))
        except FitNeeded:
            return None

    def handle(self, req: dict[str, Any], peer: Peer = UNPRIVILEGED,
               cached_only: bool = False) -> dict[str, Any]:
        """The reply map for ``req``. ``cached_only``: raise ``FitNeeded`` rather than fit
        (``light_frame``); such a request is counted when it is answered."""
        op = req.get("op")
        reply = self._handle(req, peer, cached_only)
        key = op if isinstance(op, str) and op in self.op_counts else "other"
        self.op_counts[key] += 1
        if not reply.get("ok"):
            self.count_error(reply["error"]["code"])
        return reply

    def count_error(self, code: str) -> None:
        """One more error reply with ``code`` (the server calls it for frame errors too)."""
        self.error_counts[code] = self.error_counts.get(code, 0) + 1

    def _handle(self, req: dict[str, Any], peer: Peer, cached_only: bool = False
                ) -> dict[str, Any]:
        req_id = req.get("id")
        if not isinstance(req_id, int | str | None) or isinstance(req_id, bool):
            req_id = None
        if isinstance(req_id, int) and not -(2**63) <= req_id < 2**64:
            req_id = None
        if isinstance(req_id, str) and len(req_id) > MAX_ID_CHARS:
            return error_reply(None, E_BAD_REQUEST,
                               f"'id' longer than {MAX_ID_CHARS} characters; use a shorter id")
        if req.get("v") != PROTOCOL_VERSION:
            return error_reply(req_id, E_BAD_VERSION,
                               f"protocol version {short(req.get('v'))} not supported; "
                               f"this daemon speaks v{PROTOCOL_VERSION}")
        op = req.get("op")
        fn = self.ops.get(op) if isinstance(op, str) else None
        if fn is None and isinstance(op, str) and op in self.admin_ops:
            if not self.is_admin(peer):
                return error_reply(req_id, E_FORBIDDEN,
                                   f"'{op}' is an admin request: run it as root or as a member "
                                   f"of the configured admin_group (peer uid {peer.uid})")
            fn = self.admin_ops[op]
        if fn is None:
            known = ", ".join([*self.ops, *self.admin_ops])
            return error_reply(req_id, E_BAD_REQUEST,
                               f"unknown op {short(op)}; expected one of {known}")
        try:
            if cached_only:
                if fn != self.at:  # only the daemon's own `at` knows what its state holds
                    raise FitNeeded
                result = self.at(req, cached_only=True)
            else:
                result = fn(req)
            return {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result}
        except BadRequest as exc:
            return error_reply(req_id, E_BAD_REQUEST, str(exc))
        except AdminFailed as exc:
            return error_reply(req_id, exc.code, str(exc))
        except Exception as exc:  # a bug in one op must not take the connection's peers down
            if op in self.admin_ops:
                return error_reply(req_id, E_INTERNAL, f"{op} failed: {type(exc).__name__}")
            raise

    def reading(self) -> tuple[int, ClockReading]:
        """(REALTIME ns, the reading) for one request."""
        raw, real, width = self.read_ns()
        return real, ClockReading(raw * 1e-9, real * 1e-9, abs(width) * 1e-9)

    # -- ops -----------------------------------------------------------------------------
    def now(self, req: dict[str, Any]) -> dict[str, Any]:
        raw, real, width = self.read_ns()
        return values_to_wire(real, *self.publisher.current.clock.answer_ns(raw, real, width))

    def future(self, req: dict[str, Any]) -> dict[str, Any]:
        seconds = _number(req, "seconds")
        if not 0 <= seconds <= MAX_FUTURE_S:
            raise BadRequest(f"'seconds' must be in [0, {MAX_FUTURE_S:g}], got {seconds}")
        ns, reading = self.reading()
        target = ns + round(seconds * 1e9)
        ans = self.publisher.current.clock.future(reading, seconds)
        return {**answer_to_wire(ans, target), "seconds_ahead": seconds}

    def at(self, req: dict[str, Any], cached_only: bool = False) -> dict[str, Any]:
        value = req.get("system_time_ns")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
            raise BadRequest(f"'system_time_ns' must be a positive integer, got {short(value)}")
        _ns, reading = self.reading()
        ans = self.publisher.current.clock.at(value / 1e9, reading, cached_only)
        return answer_to_wire(ans, value)

    def status(self, req: dict[str, Any]) -> dict[str, Any]:
        pub = self.publisher.current
        ns, reading = self.reading()
        ans = pub.clock.query(reading)
        return {
            **pub.status,
            "status": str(ans.status),
            "source": ans.source,
            "bound_ns": answer_to_wire(ans, ns)["bound_ns"],
            "last_sync_ns": round(ans.as_of * 1e9) if ans.as_of else None,
            "sources_disagree": pub.clock.disagreement or None,
            "protocol_version": PROTOCOL_VERSION,
        }

    def tracking(self, req: dict[str, Any]) -> dict[str, Any]:
        """``chronyc tracking`` for ChronoTick (docs/protocol.md): the estimate behind ``now``."""
        pub = self.publisher.current
        ns, reading = self.reading()
        return tracking_result(pub, ns, pub.clock.query(reading))

    def sources(self, req: dict[str, Any]) -> dict[str, Any]:
        pub = self.publisher.current
        tracks = {t.name: t for t in pub.clock.tracks}
        now_ns, _reading = self.reading()
        rows = []
        for row in pub.sources:
            track = tracks.pop(row.get("name", ""), None)
            rows.append(_merge(row, track, now_ns))
        rows.extend(_merge({"name": t.name, "kind": t.kind}, t, now_ns) for t in tracks.values())
        return {"sources": rows, "selected": pub.clock.source}


def _merge(row: dict[str, Any], track: Any, now_ns: int | None = None) -> dict[str, Any]:
    out = dict(row)
    if track is not None:
        out.update(
            samples=track.samples,
            bound_ns=math.ceil(track.bound_now * 1e9) if track.bound_now is not None else None,
            usable=track.usable,
            selected=track.selected,
            engine_state=track.reason,
        )
    for key in ("last_offset", "last_delay", "root_delay", "root_dispersion"):
        value = out.pop(key, None)
        out[key + "_ns"] = round(value * 1e9) if value is not None else None
    last_t = out.pop("last_t", None)
    out["last_ns"] = round(last_t * 1e9) if last_t is not None else None
    if now_ns is not None:  # age of the newest sample, as the daemon sees it now
        out["age_ns"] = max(0, now_ns - out["last_ns"]) if out["last_ns"] is not None else None
    return out
