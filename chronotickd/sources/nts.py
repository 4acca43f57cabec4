"""Network Time Security (RFC 8915) for the NTP client: NTS-KE and authenticated NTP.

Why our own and not ``ntpstats[nts]``: evaluated against the tamper tests in
tests/test_nts.py, ntpstats 3.8 accepts bit flips in the authenticator's ciphertext-length
field (it slices past the field's end instead of rejecting), parses NTS-KE records laxly
(critical bits, truncation, trailing bytes ignored), sets no TCP_NODELAY (~44 ms per
NTS-KE instead of ~3 ms), reads CLOCK_REALTIME for t1/t4 and honours unauthenticated
Kiss-o'-Death codes. The parts it gets right are small; owning them keeps every check here.

Traps handled (see docs/ntp.md):
- the standard ``ssl`` module cannot export keys: TLS runs on pyOpenSSL, which does not
  check the host name, so the certificate's SAN is matched here;
- the authenticator's length fields are outside the AEAD: parsed strictly, exact lengths;
- a genuine reply to another request verifies: the Unique Identifier is checked;
- an NTS NAK is unauthenticated: only a cue to redo NTS-KE, and only with our UID;
- the NTS server also answers plain NTP: an unauthenticated reply is never used.

Parsers raise only ``NtsParseError`` (a ``ValueError``); session failures ``NtsError``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

ALPN = b"ntske/1"
EXPORTER_LABEL = b"EXPORTER-network-time-security"
PROTO_NTPV4 = 0
AEAD_AES_SIV_CMAC_256 = 15
KEY_LEN = 32
UID_LEN = 32
NONCE_LEN = 16
SIV_TAG_LEN = 16
MAX_COOKIES = 8
MAX_COOKIE_LEN = 1024
MAX_PLACEHOLDERS = 7  # chrony drops requests over 1140 bytes
MAX_KE_RESPONSE = 65536

# NTS-KE record types (RFC 8915 §4)
REC_END, REC_NEXT_PROTO, REC_ERROR, REC_WARNING, REC_AEAD, REC_COOKIE, REC_SERVER, REC_PORT = (
    range(8))
KNOWN_RECORDS = frozenset(range(8))
# NTP extension field types (RFC 8915 §5)
EF_UID, EF_COOKIE, EF_COOKIE_PLACEHOLDER, EF_AUTH = 0x0104, 0x0204, 0x0304, 0x0404
NAK_CODE = "NTSN"
INSTALL_HINT = "NTS needs the 'nts' extra: pip install 'chronotick[nts]' (pyOpenSSL, cryptography)"


class NtsParseError(ValueError):
    """Bytes that are not a valid NTS-KE response or NTS extension-field block."""


class NtsError(Exception):
    """NTS-KE or authentication failed; the text says which step and why."""


def available() -> str | None:
    """None when pyOpenSSL and cryptography import, else what to install."""
    try:
        import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
        import OpenSSL.SSL  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    return None


# -- NTS-KE records ------------------------------------------------------------------------
def record(rtype: int, body: bytes = b"", critical: bool = True) -> bytes:
    return struct.pack(">HH", (0x8000 if critical else 0) | rtype, len(body)) + body


def ke_request() -> bytes:
    """NextProto [NTPv4], AEAD [AES-SIV-CMAC-256], End; all critical."""
    return (record(REC_NEXT_PROTO, struct.pack(">H", PROTO_NTPV4))
            + record(REC_AEAD, struct.pack(">H", AEAD_AES_SIV_CMAC_256)) + record(REC_END))


def split_records(data: bytes) -> tuple[list[tuple[int, bool, bytes]], bool]:
    """(records up to and including End, complete). Raises on a record after End."""
    out: list[tuple[int, bool, bytes]] = []
    off = 0
    while off + 4 <= len(data):
        t, ln = struct.unpack_from(">HH", data, off)
        if off + 4 + ln > len(data):
            return out, False
        out.append((t & 0x7FFF, bool(t & 0x8000), bytes(data[off + 4: off + 4 + ln])))
        off += 4 + ln
        if t & 0x7FFF == REC_END:
            if off != len(data):
                raise NtsParseError(f"{len(data) - off} bytes after the End of Message record")
            return out, True
    return out, False


@dataclass
class KeResult:
    cookies: list[bytes]
    server: str | None
    port: int | None
    warnings: list[int] = field(default_factory=list)


def parse_ke_response(data: bytes) -> KeResult:
    """Strict RFC 8915 §4 parsing of a whole NTS-KE response."""
    recs, complete = split_records(data)
    if not complete:
        raise NtsParseError("NTS-KE response truncated (no End of Message record)")
    _end_type, end_crit, end_body = recs[-1]
    if not end_crit or end_body:
        raise NtsParseError("End of Message record must be critical and empty")
    res = KeResult([], None, None)
    proto = aead = None
    for t, crit, body in recs[:-1]:
        if t == REC_ERROR:
            code = struct.unpack(">H", body)[0] if len(body) == 2 else -1
            raise NtsParseError(f"NTS-KE server reported error code {code}")
        if t == REC_WARNING:
            if len(body) != 2:
                raise NtsParseError("Warning record must hold 2 bytes")
            res.warnings.append(struct.unpack(">H", body)[0])
        elif t == REC_NEXT_PROTO:
            if proto is not None or body != struct.pack(">H", PROTO_NTPV4):
                raise NtsParseError("Next Protocol must be exactly NTPv4, once")
            proto = PROTO_NTPV4
        elif t == REC_AEAD:
            if aead is not None or body != struct.pack(">H", AEAD_AES_SIV_CMAC_256):
                raise NtsParseError("AEAD must be exactly AEAD_AES_SIV_CMAC_256, once")
            aead = AEAD_AES_SIV_CMAC_256
        elif t == REC_COOKIE:
            if not 0 < len(body) <= MAX_COOKIE_LEN:
                raise NtsParseError(f"cookie of {len(body)} bytes")
            if len(res.cookies) < MAX_COOKIES:
                res.cookies.append(body)
        elif t == REC_SERVER:
            try:
                name = body.decode("ascii")
            except UnicodeDecodeError:
                raise NtsParseError("Server record is not ASCII") from None
            if not name or any(c.isspace() or not c.isprintable() for c in name):
                raise NtsParseError("Server record is empty or holds odd characters")
            res.server = name
        elif t == REC_PORT:
            if len(body) != 2 or struct.unpack(">H", body)[0] == 0:
                raise NtsParseError("Port record must hold a port in 1..65535")
            res.port = struct.unpack(">H", body)[0]
        elif t == REC_END:
            raise NtsParseError("End of Message before the end")  # unreachable: split stops
        elif crit:
            raise NtsParseError(f"unknown critical NTS-KE record type {t}")
    if proto is None or aead is None:
        raise NtsParseError("server did not agree to NTPv4 with AEAD_AES_SIV_CMAC_256")
    if not res.cookies:
        raise NtsParseError("NTS-KE response carried no cookies")
    return res


# -- certificate host-name check (pyOpenSSL does not do it) ---------------------------------
def hostname_matches(cert: Any, host: str) -> bool:
    """RFC 6125 match of ``host`` against the certificate's SAN (IP or DNS, one wildcard
    label at the left); the CN is not consulted."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    want = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == want:
            return True
        if name.startswith("*.") and "." in want and want.split(".", 1)[1] == name[2:] \
                and "*" not in name[2:]:
            return True
    return False


@dataclass
class NtsKeys:
    c2s: bytes
    s2c: bytes
    cookies: list[bytes]
    server: str  # where to send NTP (Server record, else the NTS-KE host)
    port: int  # NTP port (Port record, else the configured one)
    handshake_s: float = 0.0


def key_exchange(host: str, ke_port: int, ntp_port: int, timeout: float,
                 trusted_ca: str = "", server_name: str | None = None) -> NtsKeys:
    """NTS-KE over TLS 1.3 (ALPN ntske/1) with the certificate checked against
    ``trusted_ca`` (or the system store) and ``server_name`` (default ``host``)."""
    if (missing := available()) is not None:
        raise NtsError(missing)
    from OpenSSL import SSL

    name = server_name or host
    began = time.monotonic()
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_alpn_protos([ALPN])
    # No Python verify callback: OpenSSL's own verdict is the one we want, and a cffi callback
    # needs write+execute memory, which the unit's MemoryDenyWriteExecute=yes refuses.
    ctx.set_verify(SSL.VERIFY_PEER)
    try:
        if trusted_ca:
            ctx.load_verify_locations(trusted_ca)
        else:
            ctx.set_default_verify_paths()
    except SSL.Error as exc:
        raise NtsError(f"cannot load trusted_ca {trusted_ca!r}: {exc}") from None
    try:
        sock = socket.create_connection((host, ke_port), timeout=timeout)
    except OSError as exc:
        raise NtsError(f"NTS-KE connect to {host}:{ke_port} failed: "
                       f"{exc.strerror or exc}") from None
    deadline = began + timeout
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # ~44 ms → ~3 ms
        sock.setblocking(False)
        conn = SSL.Connection(ctx, sock)
        if not _is_ip(name):
            conn.set_tlsext_host_name(name.encode("idna"))
        conn.set_connect_state()
        _tls_io(conn.do_handshake, sock, deadline, SSL)
        if conn.get_alpn_proto_negotiated() != ALPN:
            raise NtsError(f"{host}:{ke_port} did not negotiate ALPN ntske/1")
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is None or not hostname_matches(cert, name):
            raise NtsError(f"certificate of {host}:{ke_port} does not name {name!r} "
                           "(subjectAltName); check the host or the server's certificate")
        _tls_io(lambda: conn.sendall(ke_request()), sock, deadline, SSL)
        buf = b""
        while True:
            try:
                chunk = _tls_io(lambda: conn.recv(4096), sock, deadline, SSL)
            except SSL.ZeroReturnError:
                break
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_KE_RESPONSE:
                raise NtsError("NTS-KE response over 64 KiB")
            if split_records(buf)[1]:
                break
        ke = parse_ke_response(buf)
        c2s, s2c = (conn.export_keying_material(
            EXPORTER_LABEL, KEY_LEN, struct.pack(">HHB", PROTO_NTPV4, AEAD_AES_SIV_CMAC_256, d))
            for d in (0, 1))
        with contextlib.suppress(SSL.Error):
            conn.shutdown()
    except SSL.Error as exc:
        raise NtsError(f"NTS-KE TLS with {host}:{ke_port} failed: {_ssl_reason(exc)}"
                       ) from None
    except NtsParseError as exc:
        raise NtsError(f"NTS-KE with {host}:{ke_port}: {exc}") from None
    except OSError as exc:
        raise NtsError(f"NTS-KE with {host}:{ke_port}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return NtsKeys(c2s, s2c, ke.cookies, ke.server or host, ke.port or ntp_port,
                   time.monotonic() - began)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ssl_reason(exc: Exception) -> str:
    text = str(exc)
    if "certificate verify failed" in text:
        return "certificate verify failed (not signed by trusted_ca or the system store)"
    return text


def _tls_io(fn: Any, sock: socket.socket, deadline: float, SSL: Any) -> Any:
    """Run a pyOpenSSL call on a non-blocking socket, waiting with select() until done."""
    while True:
        try:
            return fn()
        except SSL.WantReadError:
            wait_r, wait_w = [sock], []
        except SSL.WantWriteError:
            wait_r, wait_w = [], [sock]
        left = deadline - time.monotonic()
        if left <= 0 or not any(select.select(wait_r, wait_w, [], left)):
            raise NtsError("NTS-KE timed out")


# -- NTP extension fields -----------------------------------------------------------------------
def ext_field(ftype: int, body: bytes) -> bytes:
    """An extension field, body zero-padded to a multiple of 4 bytes."""
    body = body + b"\0" * (-len(body) % 4)
    return struct.pack(">HH", ftype, 4 + len(body)) + body


def split_fields(data: bytes, start: int = 0) -> list[tuple[int, int, bytes]]:
    """(offset, type, body) of each field from ``start``; strict: every length a multiple
    of 4, at least 4 (16 outside the encrypted part is not demanded: chrony's UID field is
    36), and the fields cover the data exactly."""
    out = []
    off = start
    while off < len(data):
        if off + 4 > len(data):
            raise NtsParseError("truncated extension field header")
        t, ln = struct.unpack_from(">HH", data, off)
        if ln < 4 or ln % 4 or off + ln > len(data):
            raise NtsParseError(f"extension field length {ln} at offset {off} is invalid")
        out.append((off, t, bytes(data[off + 4: off + ln])))
        off += ln
    return out


def parse_authenticator(body: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of an NTS Authenticator field body, exact lengths only: the two
    length fields are outside the AEAD, so anything lax lets bit flips through."""
    if len(body) < 4:
        raise NtsParseError("authenticator shorter than its length fields")
    nlen, clen = struct.unpack_from(">HH", body)
    if not NONCE_LEN <= nlen <= 64 or clen < SIV_TAG_LEN:
        raise NtsParseError(f"authenticator nonce {nlen} / ciphertext {clen} bytes")
    npad, cpad = nlen + (-nlen % 4), clen + (-clen % 4)
    if len(body) != 4 + npad + cpad:
        raise NtsParseError("authenticator length fields do not match the field's size")
    nonce = body[4: 4 + nlen]
    ct = body[4 + npad: 4 + npad + clen]
    if any(body[4 + nlen: 4 + npad]) or any(body[4 + npad + clen:]):
        raise NtsParseError("non-zero authenticator padding")
    return nonce, ct


@dataclass
class NtsRequest:
    packet: bytes
    uid: bytes


def build_request(header: bytes, keys: NtsKeys) -> NtsRequest:
    """Header + UID + one cookie + placeholders (to refill to 8) + Authenticator.

    Uses up one cookie from ``keys`` (never reused: that would link requests)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    if not keys.cookies:
        raise NtsError("no NTS cookies left; NTS-KE needed")
    cookie = keys.cookies.pop(0)
    uid = os.urandom(UID_LEN)
    placeholders = min(MAX_PLACEHOLDERS, max(0, MAX_COOKIES - 1 - len(keys.cookies)))
    ad = (header + ext_field(EF_UID, uid) + ext_field(EF_COOKIE, cookie)
          + b"".join(ext_field(EF_COOKIE_PLACEHOLDER, b"\0" * len(cookie))
                     for _ in range(placeholders)))
    nonce = os.urandom(NONCE_LEN)
    ct = AESSIV(keys.c2s).encrypt(b"", [ad, nonce])
    auth = struct.pack(">HH", len(nonce), len(ct)) + nonce + ct
    return NtsRequest(ad + ext_field(EF_AUTH, auth), uid)


def parse_reply_fields(data: bytes) -> tuple[bytes | None, int, bytes, bytes, int]:
    """Strict structure of an NTS reply: (uid, auth offset, nonce, ciphertext, n fields).

    Exactly one UID and one Authenticator, the Authenticator last (fields after it would
    be unauthenticated), nothing but UID before it."""
    fields = split_fields(data, 48)
    if not fields or fields[-1][1] != EF_AUTH:
        raise NtsParseError("reply does not end with an NTS Authenticator")
    uid = None
    for _, t, body in fields[:-1]:
        if t == EF_UID:
            if uid is not None or len(body) != UID_LEN:
                raise NtsParseError("reply must carry one 32-byte Unique Identifier")
            uid = body
        elif t == EF_AUTH:
            raise NtsParseError("more than one NTS Authenticator")
        else:
            raise NtsParseError(f"unexpected unencrypted extension field 0x{t:04x}")
    off, _, body = fields[-1]
    nonce, ct = parse_authenticator(body)
    return uid, off, nonce, ct, len(fields)


def parse_plaintext(plain: bytes) -> list[bytes]:
    """New cookies from the decrypted part (other field types are skipped)."""
    return [body for _, t, body in split_fields(plain) if t == EF_COOKIE and body]


def verify_reply(data: bytes, uid: bytes, s2c: bytes) -> list[bytes]:
    """Authenticate a reply to the request with ``uid``; return its new cookies.

    Raises ``NtsError`` (forged, tampered, another request's, unauthenticated)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    try:
        got_uid, off, nonce, ct, _ = parse_reply_fields(data)
    except NtsParseError as exc:
        raise NtsError(f"malformed NTS reply: {exc}") from None
    if got_uid != uid:
        raise NtsError("NTS reply's Unique Identifier is not our request's")
    try:
        plain = AESSIV(s2c).decrypt(ct, [data[:off], nonce])
    except (InvalidTag, ValueError):
        raise NtsError("NTS reply failed authentication") from None
    try:
        cookies = parse_plaintext(plain)
    except NtsParseError as exc:
        raise NtsError(f"malformed encrypted NTS fields: {exc}") from None
    return [c for c in cookies if len(c) <= MAX_COOKIE_LEN]


def is_nak(data: bytes, uid: bytes) -> bool:
    """An NTS NAK for our request: stratum 0, refid NTSN, our UID (it is unauthenticated,
    so it only ever makes us redo NTS-KE)."""
    if len(data) < 48 or data[1] != 0 or data[12:16] != NAK_CODE.encode():
        return False
    try:
        fields = split_fields(data, 48)
    except NtsParseError:
        return False
    return any(t == EF_UID and body == uid for _, t, body in fields)
