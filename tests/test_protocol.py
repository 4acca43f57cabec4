"""Wire protocol v1 framing: round trip and the ways a frame can be wrong."""

from __future__ import annotations

import asyncio

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


# -- fuzz: whatever arrives, the decoder and the server answer with a typed error, never crash --
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_only_raises_protocol_error(body: bytes) -> None:
    try:
        msg = p.decode_body(body)
    except p.ProtocolError as exc:
        assert exc.code == p.E_BAD_FRAME
    else:
        assert isinstance(msg, dict) and all(isinstance(k, str) for k in msg)


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
_requests = st.fixed_dictionaries(
    {}, optional={"v": st.sampled_from([1, 2, None, "1"]) | _values,
                  "id": _values,
                  "op": st.sampled_from(["now", "status", "sources", "future", "at"]) | _values,
                  "seconds": _values, "system_time_ns": _values})


@settings(max_examples=200, deadline=None)
@given(st.lists(_requests | st.binary(max_size=40), min_size=1, max_size=4),
       st.integers(1, 64))
def test_server_answers_every_frame_or_closes(items: list, chunk: int) -> None:
    from chronotickd.core.engine import Engine
    from chronotickd.handlers import Handlers
    from chronotickd.publish import Publisher
    from chronotickd.server import SocketServer, _Connection

    stream = b"".join(
        p.HEADER.pack(len(b)) + b
        for b in (msgpack.packb(i) if isinstance(i, dict) else i for i in items))
    server = SocketServer(Handlers(Publisher(Engine().snapshot(0.0))))
    conn = _Connection(server)
    transport = _FakeTransport()
    conn.connection_made(transport)
    for i in range(0, len(stream), chunk):
        conn.data_received(stream[i : i + chunk])
    # every reply is a well-formed v1 frame; an error that closes is the last thing written
    out, replies = bytes(transport.out), []
    while out:
        (n,) = p.HEADER.unpack(out[:4])
        replies.append(p.decode_body(out[4 : 4 + n]))
        out = out[4 + n :]
    assert all(r["v"] == 1 and isinstance(r["ok"], bool) for r in replies)
    for r in replies[:-1]:
        assert r["ok"] or r["error"]["code"] in ("bad_request", "unsupported_version")
    if transport.closed:
        assert replies and not replies[-1]["ok"]
        assert replies[-1]["error"]["code"] in ("bad_frame", "frame_too_large")
    else:
        assert len(replies) == len(items)
