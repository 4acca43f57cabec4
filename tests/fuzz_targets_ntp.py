"""Fuzz entry points for the NTP/NTS parsers (the `srv` branch's bench runs them).

Each ``fuzz_xxx(data)`` must never raise anything but the parser's documented error:
``NtpParseError`` (ntp_packet.decode) or ``NtsParseError`` (nts parsers); both are
``ValueError`` subclasses and are swallowed here, so any exception escaping is a bug.
``SEEDS`` gives each target a few valid inputs to start from.
"""

from __future__ import annotations

import contextlib
import struct

from chronotickd.sources import ntp_packet as pkt
from chronotickd.sources import nts
from chronotickd.sources.ntp import NtpSettings, check_reply

_SETTINGS = NtpSettings(servers=[])
_S2C = bytes(range(32))


def fuzz_ntp_packet(data: bytes) -> None:
    """A hostile server reply: decode, then the per-sample checks and θ/δ arithmetic."""
    try:
        p = pkt.decode(data)
    except pkt.NtpParseError:
        return
    ex = pkt.exchange(1_000_000_000, 1_000_200_000, p.receive_ts, p.transmit_ts, 1_700_000_000)
    check_reply(p, ex.delay_ns / 1e9, _SETTINGS)
    _ = p.kiss_code, p.root_delay_s, p.root_dispersion_s


def fuzz_nts_ke_records(data: bytes) -> None:
    """An NTS-KE server's response stream."""
    try:
        nts.parse_ke_response(data)
    except nts.NtsParseError:
        return


def fuzz_nts_extension_fields(data: bytes) -> None:
    """The extension fields after an NTP header: structure, authenticator, cookies, and
    the whole verification (which must reject, never crash)."""
    packet = bytes(48) + data
    with contextlib.suppress(nts.NtsParseError):
        nts.parse_reply_fields(packet)
    with contextlib.suppress(nts.NtsParseError):
        nts.parse_plaintext(data)
    nts.is_nak(packet, bytes(32))
    with contextlib.suppress(nts.NtsError):
        nts.verify_reply(packet, bytes(32), _S2C)


def _seed_reply() -> bytes:
    return pkt.encode(pkt.NtpPacket(0, 4, 4, 2, 6, -20, 0, 7, b"TEST", 0, 1,
                                    pkt.unix_ns_to_ntp(1_700_000_000 * 10**9),
                                    pkt.unix_ns_to_ntp(1_700_000_000 * 10**9 + 5000)))


SEEDS: dict[str, list[bytes]] = {
    "fuzz_ntp_packet": [_seed_reply(), _seed_reply()[:47], b"\x1c" + bytes(47)],
    "fuzz_nts_ke_records": [
        nts.ke_request(),
        nts.record(nts.REC_NEXT_PROTO, b"\0\0") + nts.record(nts.REC_AEAD, b"\0\x0f")
        + nts.record(nts.REC_COOKIE, b"c" * 100) + nts.record(nts.REC_PORT, b"\x01\x7b")
        + nts.record(nts.REC_END),
    ],
    "fuzz_nts_extension_fields": [
        nts.ext_field(nts.EF_UID, bytes(32))
        + nts.ext_field(nts.EF_AUTH, struct.pack(">HH", 16, 32) + bytes(48)),
        nts.ext_field(nts.EF_COOKIE, b"c" * 100),
    ],
}

TARGETS = {name: globals()[name] for name in SEEDS}
