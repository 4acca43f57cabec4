"""A small NTP server on loopback for fault injection: shifted time, Kiss-o'-Death, leap 3,
spikes, silence, and hostile replies. Answers NTPv4 client requests (mode 3) from a thread in
the test process.

Reference time is the system clock plus ``shift`` seconds, so a test knows the truth exactly:
with ``shift == 0`` the true offset is zero.

Hostile replies go through one hook, ``Responder.mangle``: it maps the genuine reply (and the
request) to the datagrams actually sent. ``HostileReplies`` is such a hook, each reply wrong in
one way; ``HostileNtp`` is a responder that uses it (the one hostile server of the tests).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

NTP_EPOCH = 2208988800  # 1900-01-01 → 1970-01-01
PACKET = struct.Struct(">BBbbII4sQQQQ")


def to_ntp(t: float) -> int:
    return int((t + NTP_EPOCH) * 2**32) & 0xFFFFFFFFFFFFFFFF


class Responder:
    """Settings are plain attributes; change them while it runs."""

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift
        self.stratum = 2
        self.leap = 0
        self.refid = b"TEST"
        self.spike_every = 0  # every Nth reply is off by spike_s (0: never)
        self.spike_s = 0.05
        self.silent = False
        self.root_delay = 0.0
        self.root_dispersion = 0.0001
        self.requests = 0
        # hostile mode: maps (genuine reply, request) to the datagrams actually sent, each
        # with whether it leaves from another port (a spoofed source); None: the reply only
        self.mangle: Callable[[bytes, bytes], list[tuple[bytes, bool]]] | None = None
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ntp-responder", daemon=True)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kiss(self, code: str) -> None:
        """Answer every request with a Kiss-o'-Death (stratum 0, code in the reference id)."""
        self.stratum, self.refid = 0, code.encode().ljust(4, b"\0")[:4]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            received = time.time()
            if len(data) < 48 or self.silent:
                continue
            self.requests += 1
            shift = self.shift
            if self.spike_every and self.requests % self.spike_every == 0:
                shift += self.spike_s
            version = (data[0] >> 3) & 0x7
            client_tx = struct.unpack(">Q", data[40:48])[0]
            reply = PACKET.pack(
                (self.leap << 6) | (version << 3) | 4, self.stratum, 6, -20,
                int(self.root_delay * 65536), int(self.root_dispersion * 65536), self.refid,
                to_ntp(received + shift - 1), client_tx, to_ntp(received + shift),
                to_ntp(time.time() + shift))
            sends = self.mangle(reply, data) if self.mangle else [(reply, False)]
            for datagram, spoofed in sends:
                with contextlib.suppress(OSError):
                    (self.other if spoofed else self.sock).sendto(datagram, addr)

    def start(self) -> Responder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        self.other.close()


@contextlib.contextmanager
def responder(shift: float = 0.0) -> Iterator[Responder]:
    r = Responder(shift).start()
    try:
        yield r
    finally:
        r.stop()


# -- hostile replies -----------------------------------------------------------------------------
HOSTILE_MODES = ("truncated", "oversized", "bad_mode", "bad_version", "zero_transmit",
                 "absurd_root", "garbage", "wrong_origin", "spoofed_port")


class HostileReplies:
    """A ``Responder.mangle`` hook: every reply wrong in one way, the ``modes`` in turn.

    truncated (< 48 bytes), oversized (~900 bytes of garbage "extension fields"), bad_mode
    (mode 3), bad_version (0), zero_transmit, absurd_root (root dispersion 0xFFFF s), garbage
    (random bytes), wrong_origin (origin is not the client's transmit timestamp), spoofed_port
    (the genuine reply, from another port: an off-path injector); not in the default cycle:
    duplicate (the genuine reply twice: a replay whose first copy is good). ``sent`` counts
    the replies per mode.
    """

    def __init__(self, modes: tuple[str, ...] = HOSTILE_MODES, seed: int = 5) -> None:
        self.modes = modes
        self.rng = random.Random(seed)
        self.sent: dict[str, int] = {}
        self._n = 0

    def __call__(self, reply: bytes, request: bytes) -> list[tuple[bytes, bool]]:
        mode = self.modes[self._n % len(self.modes)]
        self._n += 1
        self.sent[mode] = self.sent.get(mode, 0) + 1
        rng = self.rng
        if mode == "spoofed_port":
            return [(reply, True)]
        if mode == "duplicate":
            return [(reply, False), (reply, False)]
        out = {
            "truncated": lambda: reply[: rng.randint(0, 47)],
            "oversized": lambda: reply + rng.randbytes(900),
            "bad_mode": lambda: bytes([reply[0] & ~7 | 3]) + reply[1:],
            "bad_version": lambda: bytes([reply[0] & ~(7 << 3)]) + reply[1:],
            "zero_transmit": lambda: reply[:40] + bytes(8),
            "absurd_root": lambda: reply[:8] + b"\xff" * 4 + reply[12:],
            "garbage": lambda: rng.randbytes(rng.choice([1, 47, 48, 68, 200])),
            "wrong_origin": lambda: reply[:24] + rng.getrandbits(64).to_bytes(8, "big")
            + reply[32:],
        }[mode]()
        return [(out, False)]


class HostileNtp(Responder):
    """A responder ``shift`` seconds off whose every reply is hostile (``HostileReplies``):
    a reply a client wrongly accepts shows up as a lie."""

    def __init__(self, shift: float = 10.0, modes: tuple[str, ...] = HOSTILE_MODES) -> None:
        super().__init__(shift)
        self.refid = b"EVIL"
        self.hostile = HostileReplies(modes)
        self.mangle = self.hostile

    @property
    def sent(self) -> dict[str, int]:
        return self.hostile.sent
