"""Hostile clients against the real socket of a real daemon process.

Hypothesis drives random and mutated frames (bad and huge length prefixes, truncated frames,
wrong types, deep nesting, non-msgpack bytes); dedicated tests cover slow trickles, idle
clients, clients that never read, and the connection cap. After every batch the daemon must
still answer a well-formed ``now`` on another connection, hold no leaked connection (open fds
in /proc/PID/fd back to the baseline) and still be running. The long run is
benchmarks/bench_fuzz.py.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterator

import msgpack
import pytest
from hostile import (
    HEADER,
    deep,
    frame,
    good_request,
    hostile_frame,
    mutate,
    open_fds,
    probe_now,
    replies,
    send_and_drain,
    wait_fds,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import DaemonProc, daemon_process

LIMITS = dict(server__max_connections=16, server__uid_connection_share=1.0,
              server__frame_timeout_s=0.5,
              server__idle_timeout_s=1.0, server__write_timeout_s=1.0,
              server__max_frame_bytes=4096)
HYPO = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProc]:
    with daemon_process(**LIMITS) as d:
        probe_now(d.socket)
        d.baseline_fds = open_fds(d.proc.pid)  # type: ignore[attr-defined]
        yield d
    assert "Traceback" not in d.log(), d.log()


def assert_whole(d: DaemonProc) -> None:
    """Still running, still answering, nothing leaked."""
    assert d.proc.poll() is None, d.log()
    reply = probe_now(d.socket)
    assert reply["ok"] is True and reply["result"]["bound_ns"] > 0
    n = wait_fds(d.proc.pid, d.baseline_fds)  # type: ignore[attr-defined]
    assert n <= d.baseline_fds, f"{n} fds open, baseline {d.baseline_fds}"  # type: ignore


@pytest.fixture
def whole(daemon: DaemonProc) -> Iterator[DaemonProc]:
    yield daemon
    assert_whole(daemon)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=30) | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=5),
    max_leaves=20,
)


def check_replies(data: bytes) -> None:
    """Whatever the daemon sent back is well-formed protocol: v1, ok or a typed error."""
    for r in replies(data):
        assert r["v"] == 1
        if not r["ok"]:
            assert r["error"]["code"] in {"bad_frame", "frame_too_large", "unsupported_version",
                                          "bad_request", "busy", "forbidden", "config_error"}
            assert len(r["error"]["message"]) < 400


@HYPO
@given(data=st.binary(min_size=1, max_size=300))
def test_raw_bytes(whole: DaemonProc, data: bytes) -> None:
    check_replies(send_and_drain(whole.socket, data))


@HYPO
@given(length=st.integers(0, 2**32 - 1), body=st.binary(max_size=200))
def test_arbitrary_length_prefix(whole: DaemonProc, length: int, body: bytes) -> None:
    check_replies(send_and_drain(whole.socket, HEADER.pack(length) + body))


@HYPO
@given(value=msgpack_values)
def test_wrong_types(whole: DaemonProc, value: object) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    check_replies(send_and_drain(whole.socket, frame(body)))


@HYPO
@given(v=msgpack_values, req_id=msgpack_values, op=msgpack_values,
       extra=st.dictionaries(st.sampled_from(["seconds", "system_time_ns", "x"]),
                             msgpack_values, max_size=3))
def test_request_shaped_maps(whole: DaemonProc, v: object, req_id: object, op: object,
                             extra: dict) -> None:
    req = {"v": v, "id": req_id, "op": op, **extra}
    body = msgpack.packb(req, use_bin_type=True)
    if len(body) <= 4000:
        check_replies(send_and_drain(whole.socket, frame(body)))


@HYPO
@given(seed=st.integers(0, 2**32 - 1),
       op=st.sampled_from(["now", "status", "sources", "future", "at"]))
def test_mutated_requests(whole: DaemonProc, seed: int, op: str) -> None:
    rng = random.Random(seed)
    data = b"".join(mutate(good_request(op, rng.randint(0, 9), seconds=1.0), rng)
                    for _ in range(rng.randint(1, 4)))
    check_replies(send_and_drain(whole.socket, data))


@HYPO
@given(seed=st.integers(0, 2**32 - 1))
def test_generator_mix(whole: DaemonProc, seed: int) -> None:
    rng = random.Random(seed)
    data, _ = hostile_frame(rng, 4096)
    check_replies(send_and_drain(whole.socket, data))


@pytest.mark.parametrize("depth", [10, 100, 1000, 100_000])
@pytest.mark.parametrize("kind", ["array", "map"])
def test_deep_nesting(whole: DaemonProc, depth: int, kind: str) -> None:
    data = deep(depth, kind)
    out = send_and_drain(whole.socket, frame(data[:4000]) if len(data) > 4000 else frame(data))
    got = replies(out)
    assert got and got[0]["ok"] is False
    # a deep map is still a map (wrong version); anything else is not a request map
    assert got[0]["error"]["code"] in ({"bad_frame", "unsupported_version"} if kind == "map"
                                       else {"bad_frame"})


def test_huge_prefix_gets_too_large_and_close(whole: DaemonProc) -> None:
    got = replies(send_and_drain(whole.socket, HEADER.pack(2**32 - 1) + b"abc",
                                 half_close=False))
    assert got[0]["error"]["code"] == "frame_too_large"


def test_bad_request_keeps_connection(whole: DaemonProc) -> None:
    """Client mistakes inside a well-formed map get an error and the connection stays."""
    data = (good_request("nope", 1) + good_request("future", 2, seconds="soon")
            + good_request("now", 3, id="x" * 5000)[:0] + good_request("now", 4))
    got = replies(send_and_drain(whole.socket, data))
    assert [r["id"] for r in got] == [1, 2, 4]
    assert [r["ok"] for r in got] == [False, False, True]
    long_id = frame(msgpack.packb({"v": 1, "id": "x" * 3000, "op": "now"}))
    r = replies(send_and_drain(whole.socket, long_id))[0]
    assert r["error"]["code"] == "bad_request" and r["id"] is None


def test_slow_trickle_is_cut(whole: DaemonProc) -> None:
    """A frame sent one byte at a time slower than frame_timeout_s is dropped, not waited on."""
    data = good_request("now", 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(whole.socket)
        began = time.monotonic()
        closed = False
        for b in data:
            try:
                s.send(bytes([b]))
            except OSError:
                closed = True
                break
            assert probe_now(whole.socket)["ok"]  # others are served meanwhile
            time.sleep(0.15)
        if not closed:
            s.settimeout(3)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
        assert time.monotonic() - began < 4


def test_idle_client_is_closed(whole: DaemonProc) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(whole.socket)
        began = time.monotonic()
        assert s.recv(100) == b""
        assert 0.8 < time.monotonic() - began < 4


def test_client_that_never_reads_is_dropped(whole: DaemonProc) -> None:
    """Pipelined requests without reading replies: the daemon stops buffering and closes."""
    burst = good_request("sources", 1) * 2000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(whole.socket)
        s.settimeout(0.5)
        deadline = time.monotonic() + 10
        dropped = False
        while time.monotonic() < deadline and not dropped:
            try:
                s.send(burst)
            except TimeoutError:
                time.sleep(0.2)
            except OSError:
                dropped = True
        assert dropped, "daemon kept a non-reading client's connection for 10 s"


def test_connection_cap_busy_then_close(whole: DaemonProc) -> None:
    held = []
    try:
        for _ in range(16):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect(whole.socket)
            s.sendall(good_request("now"))
            assert replies(s.recv(65536))[0]["ok"]
            held.append(s)
        extra = send_and_drain(whole.socket, good_request("now"), half_close=False)
        got = replies(extra)
        assert got and got[0]["error"]["code"] == "busy"
        assert "limit 16" in got[0]["error"]["message"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.1)
    assert probe_now(whole.socket)["ok"]
