"""Hostile-client helpers shared by tests/test_fuzz.py and benchmarks/bench_fuzz.py.

Generates the frames a broken or malicious local client might send and checks that the
daemon is still whole afterwards: it answers ``now`` on a fresh connection, and its open file
descriptors (``/proc/PID/fd``) return to the count they had before the batch.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import msgpack

HEADER = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def good_request(op: str = "now", req_id: int = 1, **args: object) -> bytes:
    return frame(msgpack.packb({"v": 1, "id": req_id, "op": op, **args}, use_bin_type=True))


def deep(depth: int, kind: str = "array") -> bytes:
    """A msgpack value nested ``depth`` levels deep (fixarray or fixmap of one element)."""
    if kind == "array":
        return b"\x91" * depth + b"\xc0"
    return b"\x81\xa1k" * depth + b"\xc0"


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, insert, delete or duplicate a few bytes of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif choice == 2 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif choice == 3:
            buf[pos:pos] = buf[pos : pos + rng.randint(1, 8)]
        else:
            buf[min(pos, len(buf)) :] = buf[min(pos, len(buf)) :][: rng.randint(0, 4)]
    return bytes(buf)


def random_value(rng: random.Random, depth: int = 0) -> object:
    kinds = ["nil", "bool", "int", "bigint", "float", "str", "bin", "list", "map", "ext"]
    if depth > 3:
        kinds = kinds[:7]
    k = rng.choice(kinds)
    if k == "nil":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "int":
        return rng.randint(-(2**63), 2**64 - 1)
    if k == "bigint":
        return rng.choice([0, -1, 2**63 - 1, 2**64 - 1, -(2**63)])
    if k == "float":
        return rng.choice([float("nan"), float("inf"), -float("inf"), -0.0, 1e308, rng.random()])
    if k == "str":
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randint(0, 40)))
    if k == "bin":
        return rng.randbytes(rng.randint(0, 40))
    if k == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if k == "map":
        return {str(rng.randint(0, 99)): random_value(rng, depth + 1)
                for _ in range(rng.randint(0, 5))}
    return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 16)))


OPS = ["now", "status", "sources", "future", "at", "nope", "", "reload", "poll_now"]


def hostile_frame(rng: random.Random, max_frame: int = 65536) -> tuple[bytes, bool]:
    """One hostile frame and whether the daemon should keep the connection open after it."""
    k = rng.randrange(11)
    if k == 0:  # raw garbage, no framing
        return rng.randbytes(rng.randint(1, 64)), False
    if k == 1:  # length prefix far over the limit
        return HEADER.pack(rng.choice([max_frame + 1, 2**31, 2**32 - 1])) + b"x" * 8, False
    if k == 2:  # truncated frame: the prefix promises more than is sent
        body = msgpack.packb({"v": 1, "op": "now"})
        return HEADER.pack(len(body) + rng.randint(1, 100)) + body, False
    if k == 3:  # a valid frame holding something that is not msgpack
        return frame(rng.randbytes(rng.randint(0, 64))), False
    if k == 4:  # valid msgpack, not a map
        return frame(msgpack.packb(random_value(rng), use_bin_type=True)), False
    if k == 5:  # deep nesting
        return frame(deep(rng.choice([100, 1000, 5000, 20000]), rng.choice(["array", "map"]))), \
            False
    if k == 6:  # a mutated good request
        return mutate(good_request(rng.choice(OPS), rng.randint(0, 9)), rng), False
    if k == 7:  # right shape, wrong types
        req = {"v": random_value(rng), "id": random_value(rng), "op": random_value(rng)}
        return frame(msgpack.packb(req, use_bin_type=True)), False
    # k 8..10: well-formed maps with bad or odd content: the connection stays open
    req = {"v": 1, "id": rng.choice([1, "x" * rng.randint(0, 300), None]),
           "op": rng.choice(["now", "future", "at", "status", "nope", "sources"]),
           "seconds": random_value(rng), "system_time_ns": random_value(rng)}
    for _ in range(rng.randint(0, 3)):
        req[str(rng.randint(0, 9))] = random_value(rng)
    return frame(msgpack.packb(req, use_bin_type=True)), True


def send_and_drain(path: str, data: bytes, timeout: float = 3.0,
                   half_close: bool = True) -> bytes:
    """Send ``data`` on a fresh connection, then read whatever comes back until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            # the daemon closed first (a frame too large, or a refusal sent and closed before
            # this request went out): what it sent before closing is still queued, read it
            pass
        out = bytearray()
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return bytes(out)


def replies(data: bytes) -> list[dict]:
    """Split a byte stream from the daemon into decoded reply maps."""
    out = []
    while len(data) >= 4:
        (n,) = HEADER.unpack(data[:4])
        if len(data) < 4 + n:
            break
        out.append(msgpack.unpackb(data[4 : 4 + n], raw=False))
        data = data[4 + n :]
    return out


def probe_now(path: str, timeout: float = 2.0) -> dict:
    """A well-formed ``now`` on its own connection; raises if the daemon does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(good_request("now", 7))
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("daemon closed the probe connection without a reply")
            buf += chunk
            got = replies(buf)
            if got:
                return got[0]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid: int, baseline: int, timeout: float = 5.0) -> int:
    """Poll until the daemon's fd count is back to ``baseline`` (or the timeout); returns it."""
    deadline = time.monotonic() + timeout
    n = open_fds(pid)
    while n > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
        n = open_fds(pid)
    return n
