"""Wire protocol v1 framing: round trip and the ways a frame can be wrong."""

from __future__ import annotations

import msgpack
import pytest

from chronotick_client import protocol as p


def test_round_trip_adds_version() -> None:
    frame = p.encode({"id": 7, "op": "now"})
    (length,) = p.HEADER.unpack(frame[:4])
    assert length == len(frame) - 4
    msg = p.decode_body(frame[4:])
    assert msg == {"v": p.PROTOCOL_VERSION, "id": 7, "op": "now"}


def test_request_and_replies_carry_version() -> None:
    assert p.request("future", 3, seconds=1.5) == {"v": 1, "id": 3, "op": "future",
                                                   "seconds": 1.5}
    ok = p.decode_body(p.encode(p.ok_reply(3, {"x": 1}))[4:])
    assert ok == {"v": 1, "id": 3, "ok": True, "result": {"x": 1}}
    err = p.decode_body(p.encode(p.error_reply(None, p.E_BAD_REQUEST, "nope"))[4:])
    assert err["ok"] is False and err["error"] == {"code": "bad_request", "message": "nope"}


def test_integers_stay_exact() -> None:
    big = 1_800_000_000_123_456_789
    msg = p.decode_body(p.encode({"t": big, "neg": -big})[4:])
    assert msg["t"] == big and msg["neg"] == -big


def test_oversize_message_refused_on_encode() -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.encode({"blob": b"x" * (p.MAX_FRAME_BYTES + 1)})
    assert exc.value.code == p.E_TOO_LARGE


@pytest.mark.parametrize("body", [
    msgpack.packb([1, 2, 3]),
    msgpack.packb("now"),
    msgpack.packb(42),
    msgpack.packb(None),
])
def test_non_map_is_bad_frame(body: bytes) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.decode_body(body)
    assert exc.value.code == p.E_BAD_FRAME
    assert "expected a map" in exc.value.message


@pytest.mark.parametrize("body", [
    b"",
    b"\xc1",  # never used in msgpack
    b"GET / HTTP/1.1\r\n",
    msgpack.packb({"v": 1})[:-1],  # truncated
    msgpack.packb({"v": 1}) + b"\x00",  # trailing garbage
    b"\x81\x01\xa1x",  # {1: "x"}: a non-string map key
])
def test_non_msgpack_is_bad_frame(body: bytes) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.decode_body(body)
    assert exc.value.code == p.E_BAD_FRAME


def test_default_socket_honours_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(p.SOCKET_ENV, raising=False)
    assert p.default_socket_path() == p.DEFAULT_SOCKET
    monkeypatch.setenv(p.SOCKET_ENV, "/tmp/x.sock")
    assert p.default_socket_path() == "/tmp/x.sock"
