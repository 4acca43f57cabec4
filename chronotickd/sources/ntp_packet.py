"""NTPv4 packets (RFC 5905) with integer timestamps, and the offset/delay arithmetic.

Everything here is pure: bytes in, integers out. Timestamps stay 64-bit NTP integers until
they are turned into integer nanoseconds; θ and δ are computed in integer nanoseconds on the
daemon's TIME BASE (t1, t4 read from CLOCK_MONOTONIC_RAW, ``epoch`` a whole number of
seconds with raw + epoch ≈ REALTIME), so no float rounding enters the measurement.

``decode`` raises only ``NtpParseError`` (a ``ValueError``): a hostile server can send any
bytes, and the caller drops and counts what does not parse.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 → 1970-01-01
NS = 1_000_000_000
ERA_NS = (1 << 32) * NS  # one NTP era (2**32 s) in ns
HEADER = struct.Struct(">BBbbII4sQQQQ")
HEADER_LEN = 48
MODE_CLIENT, MODE_SERVER = 3, 4
LEAP_UNSYNC = 3
MAX_PACKET = 1500  # a reply larger than one Ethernet frame is not a reply to us


class NtpParseError(ValueError):
    """The bytes are not an NTP server reply we can read (the only error ``decode`` raises)."""


@dataclass(frozen=True, slots=True)
class NtpPacket:
    """The 48-byte header; timestamps are raw 64-bit NTP values (seconds << 32 | fraction)."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int  # NTP short format: 16.16 fixed point seconds
    root_dispersion: int
    ref_id: bytes
    reference_ts: int
    origin_ts: int
    receive_ts: int
    transmit_ts: int
    extensions: bytes = b""  # whatever follows the header (NTS extension fields)

    @property
    def root_delay_s(self) -> float:
        return self.root_delay / 65536.0

    @property
    def root_dispersion_s(self) -> float:
        return self.root_dispersion / 65536.0

    @property
    def kiss_code(self) -> str:
        """The 4-letter Kiss-o'-Death code (meaningful when stratum is 0)."""
        return "".join(chr(b) for b in self.ref_id if 32 < b < 127)


def encode(p: NtpPacket) -> bytes:
    return HEADER.pack(
        (p.leap << 6) | (p.version << 3) | p.mode, p.stratum, p.poll, p.precision,
        p.root_delay, p.root_dispersion, p.ref_id, p.reference_ts, p.origin_ts,
        p.receive_ts, p.transmit_ts) + p.extensions


def decode(data: bytes) -> NtpPacket:
    """Parse a datagram; ``NtpParseError`` when it is too short or too long to be NTP."""
    if len(data) < HEADER_LEN:
        raise NtpParseError(f"{len(data)} bytes, an NTP packet has at least {HEADER_LEN}")
    if len(data) > MAX_PACKET:
        raise NtpParseError(f"{len(data)} bytes, more than any reply to our requests")
    b0, stratum, poll, prec, rdelay, rdisp, refid, ref, org, rec, xmt = HEADER.unpack_from(data)
    return NtpPacket(b0 >> 6, (b0 >> 3) & 7, b0 & 7, stratum, poll, prec, rdelay, rdisp, refid,
                     ref, org, rec, xmt, bytes(data[HEADER_LEN:]))


def client_request(transmit_ts: int, extensions: bytes = b"") -> bytes:
    """A mode-3 NTPv4 request whose transmit timestamp is ``transmit_ts`` (a random nonce:
    the client's own send time is kept locally from CLOCK_MONOTONIC_RAW, never trusted
    to the wire)."""
    return encode(NtpPacket(0, 4, MODE_CLIENT, 0, 0, 0, 0, 0, b"\0" * 4, 0, 0, 0,
                            transmit_ts, extensions))


def random_timestamp() -> int:
    """64 random bits for the transmit field: the reply must echo it as its origin."""
    return int.from_bytes(os.urandom(8), "big") or 1


def ntp_to_unix_ns(ts: int, pivot_ns: int) -> int:
    """An NTP timestamp as Unix ns, in the era nearest ``pivot_ns`` (RFC 5905 era rule).

    The fraction is rounded to the nearest ns (2**-32 s is 0.23 ns)."""
    secs, frac = ts >> 32, ts & 0xFFFFFFFF
    ns = (secs - NTP_EPOCH_OFFSET_S) * NS + ((frac * NS + (1 << 31)) >> 32)
    era = (pivot_ns - ns + ERA_NS // 2) // ERA_NS
    return ns + era * ERA_NS


def unix_ns_to_ntp(ns: int) -> int:
    """Unix ns → 64-bit NTP timestamp (modulo the era)."""
    secs, rem = divmod(ns, NS)
    frac = (rem << 32) // NS
    return (((secs + NTP_EPOCH_OFFSET_S) & 0xFFFFFFFF) << 32) | frac


@dataclass(frozen=True, slots=True)
class Exchange:
    """θ and δ of one client/server exchange, integer ns on the daemon's time base.

    ``t_raw_ns`` is the raw midpoint (t1 + t4) / 2; ``offset_ns`` = θ = reference − (raw +
    epoch); ``delay_ns`` = (t4 − t1) − (T3 − T2)."""

    t_raw_ns: int
    offset_ns: int
    delay_ns: int


def exchange(t1_raw_ns: int, t4_raw_ns: int, receive_ts: int, transmit_ts: int,
             epoch_s: int) -> Exchange:
    """θ = ((T2 − (t1 + epoch)) + (T3 − (t4 + epoch))) / 2, δ = (t4 − t1) − (T3 − T2)."""
    epoch_ns = epoch_s * NS
    pivot = t1_raw_ns + epoch_ns
    t2 = ntp_to_unix_ns(receive_ts, pivot)
    t3 = ntp_to_unix_ns(transmit_ts, pivot)
    a = t2 - (t1_raw_ns + epoch_ns)
    b = t3 - (t4_raw_ns + epoch_ns)
    return Exchange(t_raw_ns=(t1_raw_ns + t4_raw_ns) // 2, offset_ns=(a + b) // 2,
                    delay_ns=(t4_raw_ns - t1_raw_ns) - (t3 - t2))
