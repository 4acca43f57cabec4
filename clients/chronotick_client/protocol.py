"""ChronoTick wire protocol v1: msgpack maps behind a 4-byte big-endian length prefix.

Shared by the daemon and every client; imports only the standard library and msgpack.
Specified in docs/protocol.md — change both together and bump ``PROTOCOL_VERSION`` on any
incompatible change.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 * 1024  # both directions; the daemon may be configured lower

DEFAULT_SOCKET = "/run/chronotick/chronotick.sock"
SOCKET_ENV = "CHRONOTICK_SOCKET"

OPS = ("now", "status", "sources", "future", "at")

# error codes a reply may carry
E_BAD_FRAME = "bad_frame"  # not msgpack, or not a map; the connection is closed after the reply
E_TOO_LARGE = "frame_too_large"  # length prefix over the limit; connection closed
E_BAD_VERSION = "unsupported_version"
E_BAD_REQUEST = "bad_request"  # unknown op or bad arguments; the connection stays open
E_BUSY = "busy"  # too many connections; closed
E_FORBIDDEN = "forbidden"  # admin op from an unprivileged peer
E_INTERNAL = "internal"


class ProtocolError(Exception):
    """A frame that cannot be decoded or does not follow the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def default_socket_path() -> str:
    """``$CHRONOTICK_SOCKET`` when set, else the system daemon's socket."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def encode(message: dict[str, Any]) -> bytes:
    """Frame one message (``v`` is added when missing)."""
    if "v" not in message:
        message = {"v": PROTOCOL_VERSION, **message}
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"{len(body)} bytes > {MAX_FRAME_BYTES}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a map; raises ``ProtocolError`` for anything else."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=len(body),
                              max_str_len=len(body), max_array_len=1024, max_map_len=64)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(E_BAD_FRAME, f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(E_BAD_FRAME, f"expected a map, got {type(obj).__name__}")
    return obj


def request(op: str, req_id: int = 0, **args: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "op": op, **args}


def ok_reply(req_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result}


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": False,
            "error": {"code": code, "message": message}}


_FINITE_LIMIT = 2**62 / 1e9  # a bound this wide (or NaN/inf) is sent as 2**62 ns


def interval_ns(offset: float, bound: float) -> tuple[int, int, int, int]:
    """(offset_ns, bound_ns, earliest − system, latest − system) in integer ns, rounded
    outward; a bound this wide (or NaN/inf) saturates at 2**62 ns. ``bound_ns`` is the larger
    distance from the corrected time to either end, so ``corrected ± bound_ns`` covers
    ``[earliest, latest]`` too and integer arithmetic never narrows the promise."""
    offset_ns = round(offset * 1e9)
    if not bound < _FINITE_LIMIT:
        return offset_ns, 2**62, offset_ns - 2**62, offset_ns + 2**62
    lo = math.floor((offset - bound) * 1e9)
    hi = math.ceil((offset + bound) * 1e9)
    return offset_ns, max(math.ceil(bound * 1e9), offset_ns - lo, hi - offset_ns), lo, hi


def now_result(system_time_ns: int, offset: float, bound: float, status: str, source: str,
               as_of: float, void_after: float) -> dict[str, Any]:
    """The ``now`` result for a time answer (seconds, as ``ClockState.answer`` returns them),
    in integer ns with the interval rounded outward (``interval_ns``). The daemon's socket and
    the shared-memory reader both build it here, so the two cannot drift apart."""
    offset_ns, bound_ns, lo, hi = interval_ns(offset, bound)
    as_of_ns = round(as_of * 1e9) if as_of else 0
    return {
        "corrected_time_ns": system_time_ns + offset_ns,
        "system_time_ns": system_time_ns,
        "offset_ns": offset_ns,
        "bound_ns": bound_ns,
        "earliest_ns": system_time_ns + lo,
        "latest_ns": system_time_ns + hi,
        "status": str(status),
        "source": source,
        "as_of_ns": as_of_ns,
        "age_ns": max(0, system_time_ns - as_of_ns) if as_of_ns else None,
        "void_after_ns": round(void_after * 1e9) if void_after else 0,
    }
