"""A small NTP server on loopback for fault injection: shifted time, Kiss-o'-Death, leap 3,
spikes, silence. Answers NTPv4 client requests (mode 3) from a thread in the test process.

Reference time is the system clock plus ``shift`` seconds, so a test knows the truth exactly:
with ``shift == 0`` the true offset is zero.
"""

from __future__ import annotations

import contextlib
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
