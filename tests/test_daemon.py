"""Integration: the real daemon process against a real loopback chronyd, queried through the
real CLI, the client library and raw frames on the real socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support import (
    PYTHONPATH,
    REPO,
    Chronyd,
    DaemonProc,
    cli,
    daemon_process,
    free_udp_port,
    write_config,
)

from chronotick_client import Client
from chronotick_client.protocol import PROTOCOL_VERSION


def cli_json(sock: str, *args: str) -> dict[str, Any]:
    r = cli(*args, "--json", socket_path=sock)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_status(sock: str, want: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with Client(sock) as c:
        while True:
            r = c.now()
            if r["status"] == want or time.monotonic() > deadline:
                return r
            time.sleep(0.2)


@pytest.fixture(scope="module")
def synced(chronyd: Chronyd) -> Iterator[DaemonProc]:
    """One daemon polling the loopback chronyd, shared by the read-only tests below."""
    with daemon_process(ntp__servers=[chronyd.server]) as d:
        yield d


# -- acceptance --------------------------------------------------------------------------------
def test_now_json_synchronized_within_15_s(synced: DaemonProc, chronyd: Chronyd) -> None:
    deadline = time.monotonic() + 15
    while True:
        before = time.time_ns()
        r = cli_json(synced.socket, "now")
        after = time.time_ns()
        if r["status"] == "synchronized" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for key in ("corrected_time_ns", "system_time_ns", "offset_ns", "bound_ns", "earliest_ns",
                "latest_ns", "status", "source", "as_of_ns"):
        assert key in r
    assert r["status"] == "synchronized", synced.log()
    assert r["source"] == "ntp"
    assert abs(r["offset_ns"]) <= r["bound_ns"] <= 5_000_000
    # chronyd serves this very clock: the system time is the true time
    assert r["earliest_ns"] <= r["system_time_ns"] <= r["latest_ns"]
    assert before <= r["system_time_ns"] <= after
    assert r["earliest_ns"] <= after and r["latest_ns"] >= before
    assert r["corrected_time_ns"] == r["system_time_ns"] + r["offset_ns"]
    assert 0 < r["as_of_ns"] <= r["system_time_ns"]


def test_now_text(synced: DaemonProc) -> None:
    wait_status(synced.socket, "synchronized")
    r = cli("now", socket_path=synced.socket)
    assert r.returncode == 0
    first = r.stdout.splitlines()[0]
    assert "± " in first and "(synchronized, source ntp)" in first
    assert "earliest" in r.stdout and "latest" in r.stdout and "reference − system" in r.stdout
    # JSON flag works before the command too
    assert json.loads(cli("--json", "now", socket_path=synced.socket).stdout)["source"] == "ntp"


def test_status(synced: DaemonProc) -> None:
    wait_status(synced.socket, "synchronized")
    r = cli_json(synced.socket, "status")
    assert r["status"] == "synchronized" and r["source"] == "ntp"
    assert r["pid"] == synced.proc.pid
    assert r["protocol_version"] == PROTOCOL_VERSION
    assert r["socket"] == synced.socket
    assert r["measurements"] >= 3 and r["bound_ns"] > 0 and r["last_sync_ns"] > 0
    text = cli("status", socket_path=synced.socket).stdout
    assert text.startswith("status     synchronized via ntp")


def test_sources(synced: DaemonProc, chronyd: Chronyd) -> None:
    wait_status(synced.socket, "synchronized")
    r = cli_json(synced.socket, "sources")
    (row,) = r["sources"]
    assert row["name"] == f"ntp:{chronyd.server}"
    assert row["state"] == "ok" and row["selected"] and row["usable"]
    assert row["stratum"] == 1 and row["samples"] >= 3
    # chronyd serves this very clock: the offset error is at most half the round trip
    assert row["last_delay_ns"] >= 0
    assert abs(row["last_offset_ns"]) <= row["last_delay_ns"] / 2 + 100_000
    assert r["selected"] == "ntp"
    text = cli("sources", socket_path=synced.socket).stdout
    assert f"* ntp:{chronyd.server}" in text and "selected: ntp" in text


def test_future_is_wider_than_now(synced: DaemonProc) -> None:
    now = wait_status(synced.socket, "synchronized")
    fut = cli_json(synced.socket, "future", "10")
    assert fut["seconds_ahead"] == 10
    assert fut["bound_ns"] > now["bound_ns"]
    assert abs(fut["system_time_ns"] - (now["system_time_ns"] + 10 * 10**9)) < 2 * 10**9
    assert fut["earliest_ns"] < fut["corrected_time_ns"] < fut["latest_ns"]
    r = cli("future", "-1", socket_path=synced.socket)
    assert r.returncode == 4 and "bad_request" in r.stderr


def test_at_is_retrospective(synced: DaemonProc) -> None:
    wait_status(synced.socket, "synchronized")
    past = time.time_ns() - 1_000_000_000
    with Client(synced.socket) as c:  # let a measurement arrive after `past`
        deadline = time.monotonic() + 15
        while c.status()["last_sync_ns"] <= past and time.monotonic() < deadline:
            time.sleep(0.2)
    r = cli_json(synced.socket, "at", str(past))
    assert r["system_time_ns"] == past
    assert r["status"] == "synchronized" and r["source"] == "ntp"
    assert r["earliest_ns"] <= past <= r["latest_ns"]  # same clock: truth is the system time
    assert r["as_of_ns"] > past  # measurements after the instant were used
    with Client(synced.socket) as c:
        assert c.at(past)["system_time_ns"] == past


def test_library_keeps_one_connection(synced: DaemonProc) -> None:
    with Client(synced.socket) as c:
        deadline = time.monotonic() + 15  # (run alone, no earlier test waited for the sync)
        while c.now()["status"] != "synchronized" and time.monotonic() < deadline:
            time.sleep(0.2)
        first = c._sock
        answers = [c.now() for _ in range(50)]
        # the same socket all along (the Client's default path: not shared memory)
        assert c._sock is first and first is not None and c._shm is None
    assert all(a["status"] in ("synchronized", "freerunning") for a in answers)
    assert [a["system_time_ns"] for a in answers] == sorted(a["system_time_ns"] for a in answers)


# -- error paths -------------------------------------------------------------------------------
def test_daemon_down_names_socket_and_how_to_start(tmp_path: Path) -> None:
    sock = str(tmp_path / "nobody.sock")
    r = cli("now", socket_path=sock)
    assert r.returncode != 0
    assert sock in r.stderr and "make run" in r.stderr and "systemctl" in r.stderr
    env_r = subprocess.run([sys.executable, "-m", "chronotick_client", "now"],
                           capture_output=True, text=True, timeout=10, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": PYTHONPATH,
                                "CHRONOTICK_SOCKET": sock})
    assert env_r.returncode != 0 and sock in env_r.stderr


def _raw(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def _read_reply(sock: socket.socket) -> dict[str, Any] | None:
    """One reply frame, or None when the daemon closed the connection."""
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        assert chunk, "connection closed mid-frame"
        body += chunk
    return msgpack.unpackb(body, raw=False)


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


@pytest.mark.parametrize("frame,code", [
    (struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1", "bad_frame"),
    (struct.pack(">I", 3) + msgpack.packb([1, 2]), "bad_frame"),
    (struct.pack(">I", 1 << 30), "frame_too_large"),
])
def test_bad_frame_gets_typed_error_and_only_that_connection_closes(
        synced: DaemonProc, frame: bytes, code: str) -> None:
    with _connect(synced.socket) as good, _connect(synced.socket) as bad:
        _raw(good, msgpack.packb({"v": 1, "id": 1, "op": "now"}))
        assert _read_reply(good)["ok"] is True
        bad.sendall(frame)
        reply = _read_reply(bad)
        assert reply is not None and reply["ok"] is False and reply["v"] == PROTOCOL_VERSION
        assert reply["error"]["code"] == code and reply["error"]["message"]
        assert _read_reply(bad) is None  # closed after the error
        _raw(good, msgpack.packb({"v": 1, "id": 2, "op": "now"}))
        again = _read_reply(good)
        assert again["ok"] is True and again["id"] == 2


@pytest.mark.parametrize("request_,code,words", [
    ({"v": 1, "id": 5, "op": "teleport"}, "bad_request", "unknown op 'teleport'"),
    ({"v": 1, "id": 5, "op": "future"}, "bad_request", "'seconds' must be a finite number"),
    ({"v": 1, "id": 5, "op": "future", "seconds": "x"}, "bad_request", "'seconds'"),
    ({"v": 1, "id": 5, "op": "at", "system_time_ns": -4}, "bad_request", "system_time_ns"),
    ({"v": 1, "id": 5, "op": "at", "system_time_ns": 1.5}, "bad_request", "system_time_ns"),
    ({"v": 99, "id": 5, "op": "now"}, "unsupported_version", "v1"),
    ({"id": 5, "op": "now"}, "unsupported_version", "None"),
])
def test_bad_request_keeps_connection_open(synced: DaemonProc, request_: dict[str, Any],
                                           code: str, words: str) -> None:
    with _connect(synced.socket) as s:
        _raw(s, msgpack.packb(request_))
        reply = _read_reply(s)
        assert reply == {"v": 1, "id": 5, "ok": False,
                         "error": {"code": code, "message": reply["error"]["message"]}}
        assert words in reply["error"]["message"]
        _raw(s, msgpack.packb({"v": 1, "id": 6, "op": "status"}))
        assert _read_reply(s)["ok"] is True


def test_request_id_is_echoed_or_nulled(synced: DaemonProc) -> None:
    with _connect(synced.socket) as s:
        for rid, echoed in (("abc", "abc"), (7, 7), (None, None), ([1], None), (True, None)):
            _raw(s, msgpack.packb({"v": 1, "id": rid, "op": "now"}))
            reply = _read_reply(s)
            assert reply["ok"] is True and reply["id"] == echoed


def test_garbage_does_not_disturb_a_client_in_flight(synced: DaemonProc) -> None:
    with Client(synced.socket) as c:
        c.now()
        for _ in range(5):
            with _connect(synced.socket) as bad:
                bad.sendall(b"\x00\x00\x00\x02\xc1\xc1")
                _read_reply(bad)
            assert c.now()["source"] in ("ntp", "system")
        assert c.status()["pid"] == synced.proc.pid


# -- lifecycle ---------------------------------------------------------------------------------
def test_stale_socket_replaced_and_sigterm_cleans_up(tmp_path: Path) -> None:
    stale = tmp_path / "ct.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays; nobody listens (a daemon that was SIGKILLed)
    assert stale.exists()
    with daemon_process(workdir=tmp_path, ntp__servers=[]) as d:
        assert cli_json(d.socket, "now")["status"] == "unsynchronized"
        # a second daemon must not steal a live socket
        second = subprocess.run([sys.executable, "-m", "chronotickd", "--config", str(d.config)],
                                capture_output=True, text=True, timeout=30, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": PYTHONPATH})
        assert second.returncode == 1 and "already listens" in second.stderr
        assert cli_json(d.socket, "now")["status"] == "unsynchronized"
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert not stale.exists()
        assert "shutting down" in d.log()


def test_socket_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ct.sock").write_text("precious")
    conf = write_config(tmp_path, ntp__servers=[])
    r = subprocess.run([sys.executable, "-m", "chronotickd", "--config", str(conf)],
                       capture_output=True, text=True, timeout=30, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert r.returncode == 1 and "is not a socket" in r.stderr
    assert (tmp_path / "ct.sock").read_text() == "precious"


def test_socket_in_impossible_place_names_it_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "ct.sock")  # parent is a regular file
    conf = write_config(tmp_path, ntp__servers=[], socket=bad)
    r = subprocess.run([sys.executable, "-m", "chronotickd", "--config", str(conf)],
                       capture_output=True, text=True, timeout=30, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert r.returncode == 1
    assert f"cannot create the socket {bad}" in r.stderr and "--socket" in r.stderr


def test_socket_mode_is_applied(tmp_path: Path) -> None:
    with daemon_process(workdir=tmp_path, ntp__servers=[], socket_mode="0660") as d:
        assert (os.stat(d.socket).st_mode & 0o777) == 0o660


def test_sigint_also_shuts_down_cleanly(tmp_path: Path) -> None:
    with daemon_process(workdir=tmp_path, ntp__servers=[]) as d:
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(10) == 0
        assert not os.path.exists(d.socket)


def boot_env(tmp_path: Path, boot: str) -> dict[str, str]:
    """Point the daemon's boot_id at a file of ours (what the clock rig does for reboots)."""
    path = tmp_path / "boot_id"
    path.write_text(boot + "\n")
    return {"CHRONOTICK_BOOT_ID_FILE": str(path)}


def test_state_written_and_restored(tmp_path: Path, chronyd: Chronyd) -> None:
    env = boot_env(tmp_path, "boot-one")
    with daemon_process(workdir=tmp_path, env=env, ntp__servers=[chronyd.server]) as d:
        assert wait_status(d.socket, "synchronized")["status"] == "synchronized"
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
    state = json.loads((tmp_path / "state" / "drift.json").read_text())
    # θ = reference − (raw + epoch) with epoch = round(REALTIME − RAW): within half a second
    assert state["format"] == 2 and abs(state["offset"]) < 0.6
    assert state["boot_id"] == "bootone" and state["saved_raw"] >= state["raw"]
    # restart without NTP, same boot: the saved estimate is served, freerunning, with a bound
    # that grows from the saved raw time
    with daemon_process(workdir=tmp_path, env=env, ntp__servers=[]) as d:
        a = cli_json(d.socket, "now")
        time.sleep(1.0)
        b = cli_json(d.socket, "now")
        assert a["status"] == b["status"] == "freerunning"
        assert a["source"] == "restored"
        assert b["bound_ns"] > a["bound_ns"]
        assert b["earliest_ns"] <= b["system_time_ns"] <= b["latest_ns"]
        assert "restored the estimate" in d.log() and "same boot" in d.log()
    # restart with NTP: freerunning until fresh samples confirm it, then synchronized
    with daemon_process(workdir=tmp_path, env=env, ntp__servers=[chronyd.server]) as d:
        first = cli_json(d.socket, "now")
        assert first["status"] in ("freerunning", "synchronized")
        assert first["status"] != "unsynchronized"
        assert wait_status(d.socket, "synchronized")["source"] == "ntp"


def test_state_from_another_boot_restores_the_frequency_only(tmp_path: Path,
                                                             chronyd: Chronyd) -> None:
    """After a reboot the saved offset means nothing (raw restarted, the clock moved while
    down): unsynchronized with the kernel's bound until measured, never the old offset."""
    with daemon_process(workdir=tmp_path, env=boot_env(tmp_path, "boot-one"),
                        ntp__servers=[chronyd.server]) as d:
        assert wait_status(d.socket, "synchronized")["status"] == "synchronized"
    assert json.loads((tmp_path / "state" / "drift.json").read_text())["boot_id"] == "bootone"
    with daemon_process(workdir=tmp_path, env=boot_env(tmp_path, "boot-two"),
                        ntp__servers=[]) as d:
        r = cli_json(d.socket, "now")
        assert r["status"] == "unsynchronized" and r["source"] == "system"
        assert r["offset_ns"] == 0 and r["bound_ns"] >= 1_000
        assert "earlier boot" in d.log() and "frequency" in d.log()


def test_old_format_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "drift.json").write_text(json.dumps(
        {"format": 1, "t": time.time() - 10, "offset": 0.5, "freq": 1e-6,
         "offset_stddev": 1e-6, "freq_stddev": 1e-9, "systematic": 1e-5}))
    with daemon_process(workdir=tmp_path, ntp__servers=[]) as d:
        r = cli_json(d.socket, "now")
        assert r["status"] == "unsynchronized" and r["offset_ns"] == 0
        assert d.log().count("ignoring state file") == 1


def test_corrupt_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "drift.json").write_text("{not json")
    with daemon_process(workdir=tmp_path, ntp__servers=[]) as d:
        assert cli_json(d.socket, "now")["status"] == "unsynchronized"
        assert "ignoring state file" in d.log()


def test_no_ntp_reachable_still_serves_unsynchronized(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_udp_port()}"
    with daemon_process(workdir=tmp_path, ntp__servers=[dead, "no-such-host.invalid"],
                        ntp__timeout_s=0.2, ntp__minpoll_s=0.3, ntp__burst_interval_s=0.3) as d:
        time.sleep(1.5)  # several rounds
        r = cli_json(d.socket, "now")
        assert r["status"] == "unsynchronized" and r["source"] == "system"
        assert r["bound_ns"] > 0 and r["offset_ns"] == 0
        assert r["earliest_ns"] <= r["system_time_ns"] <= r["latest_ns"]
        src = cli_json(d.socket, "sources")
        assert {row["state"] for row in src["sources"]} == {"unreachable"}
        lines = [ln for ln in d.log().splitlines() if "no NTP server usable" in ln]
        assert len(lines) == 1, d.log()
        assert "unsynchronized" in lines[0] and dead in lines[0]


def test_protocol_doc_example_client_works(synced: DaemonProc) -> None:
    """The stand-alone client in docs/protocol.md runs as printed against the real daemon."""
    import re

    text = (REPO / "docs" / "protocol.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[-1]
    scope: dict[str, Any] = {}
    exec(code.replace("/run/chronotick/chronotick.sock", synced.socket), scope)
    assert scope["r"]["source"] in ("ntp", "system")


def test_watch_prints_count_lines(synced: DaemonProc) -> None:
    r = cli("watch", "--count", "3", "--interval", "0.05", socket_path=synced.socket)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 3
    assert all(" ± " in ln for ln in lines)
    j = cli("watch", "--count", "2", "--interval", "0.05", "--json", socket_path=synced.socket)
    rows = [json.loads(ln) for ln in j.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["system_time_ns"] < rows[1]["system_time_ns"]


def test_client_survives_idle_close_and_daemon_restart(tmp_path: Path) -> None:
    with Client(str(tmp_path / "ct.sock")) as c:
        with daemon_process(workdir=tmp_path, ntp__servers=[],
                            server__idle_timeout_s=0.3) as d:
            first = c.status()["pid"]
            time.sleep(1.0)  # the daemon closes the idle connection
            assert c.status()["pid"] == first == d.proc.pid
        with pytest.raises(ConnectionError) as exc:  # DaemonUnavailable
            c.now()
        assert str(tmp_path / "ct.sock") in str(exc.value)
        with daemon_process(workdir=tmp_path, ntp__servers=[]) as d2:
            assert c.status()["pid"] == d2.proc.pid
