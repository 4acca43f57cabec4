"""chronotick-mcp end to end: the SDK's own ClientSession spawns ``python -m chronotick_mcp``
over stdio against a live chronotickd fed by a real loopback chronyd.

Each session costs one adapter start (about a second here), so checks that share a session
are grouped; the pure ordering rule is tested without any process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from support import PYTHONPATH, REPO, DaemonProc, daemon_process, kill_pid

from chronotick_client import Client
from chronotick_mcp import ordering, tools
from chronotick_mcp.models import Event

TOOLS = {"get_time", "get_daemon_status", "get_time_with_future_uncertainty", "order_events",
         "correct_timestamp", "get_current_time", "convert_time"}
STATUSES = {"synchronized", "freerunning", "unsynchronized"}


# -- helpers --------------------------------------------------------------------------------
def parse_iso_ns(text: str) -> int:
    """ISO 8601 UTC with 9 fractional digits → integer ns, independently of iso_ns()."""
    assert text.endswith("Z") and len(text.split(".")[1]) == 10, text
    head, frac = text[:-1].split(".")
    secs = int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return secs * 1_000_000_000 + int(frac)


@contextlib.asynccontextmanager
async def mcp_session(socket_path: str | None, *, python_flags: tuple[str, ...] = (),
                      env: dict[str, str] | None = None, errlog: Any = None,
                      timeout_s: float = 10.0, extra_args: tuple[str, ...] = (),
                      ) -> AsyncIterator[ClientSession]:
    """A real MCP client session with a freshly spawned adapter (tools listed, so the client
    validates every structured result against the tool's outputSchema)."""
    # a generous daemon timeout: CI machines are shared, and a slow answer is not the point
    args = [*python_flags, "-m", "chronotick_mcp", "--timeout", str(timeout_s), *extra_args]
    if socket_path is not None:
        args += ["--socket", socket_path]
    params = StdioServerParameters(command=sys.executable, args=args, cwd=str(REPO),
                                   env={"PYTHONPATH": PYTHONPATH, **(env or {})})
    async with (stdio_client(params, errlog=errlog or sys.stderr) as (read, write),
                ClientSession(read, write, read_timeout_seconds=30) as session):
        await session.initialize()
        await session.list_tools()
        yield session


def run_session(socket_path: str | None, body: Callable[[ClientSession], Awaitable[None]],
                **kwargs: Any) -> None:
    async def main() -> None:
        async with mcp_session(socket_path, **kwargs) as session:
            await body(session)

    anyio.run(main)


async def call_ok(session: ClientSession, name: str, args: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    res = await session.call_tool(name, args or {})
    text = res.content[0].text if res.content else ""
    assert not res.is_error, (name, args, text)
    data = res.structured_content
    assert isinstance(data, dict)
    assert json.loads(text) == data  # the text block carries the same JSON for text-only clients
    return data


async def call_invalid(session: ClientSession, name: str, args: dict[str, Any]) -> MCPError:
    with pytest.raises(MCPError) as info:
        await session.call_tool(name, args)
    assert info.value.code == INVALID_PARAMS, info.value
    return info.value


def check_time_fields(r: dict[str, Any]) -> None:
    assert r["status"] in STATUSES, r
    assert parse_iso_ns(r["corrected_time"]) == r["corrected_time_ns"], r
    assert parse_iso_ns(r["earliest"]) == r["earliest_ns"], r
    assert parse_iso_ns(r["latest"]) == r["latest_ns"], r
    assert r["corrected_time_ns"] == r["system_time_ns"] + r["offset_ns"], r
    # the wire rounds the interval outward: within 1 ns of corrected ± bound, never outside it
    assert 0 <= r["earliest_ns"] - (r["corrected_time_ns"] - r["bound_ns"]) <= 1, r
    assert 0 <= (r["corrected_time_ns"] + r["bound_ns"]) - r["latest_ns"] <= 1, r
    assert r["bound_ns"] > 0, r
    assert r["summary"] and "\n" not in r["summary"], r


def wait_synchronized(sock: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with Client(sock) as c:
        while time.monotonic() < deadline:
            if c.now()["status"] == "synchronized":
                return
            time.sleep(0.2)
    raise AssertionError("daemon did not synchronize to the loopback chronyd")


@pytest.fixture(scope="module")
def daemon(chronyd: Any) -> Iterator[DaemonProc]:
    """A live chronotickd measuring the loopback chronyd, synchronized before tests start."""
    with daemon_process(ntp__servers=[chronyd.server]) as d:
        wait_synchronized(d.socket)
        yield d


# -- the pure ordering rule ------------------------------------------------------------------
def ev(i: str, lo: int, hi: int) -> Event:
    return Event(id=i, earliest_ns=lo, latest_ns=hi)


def test_ordering_rule_on_interval_edges() -> None:
    a = ev("a", 0, 10)
    assert ordering.relation(a, ev("b", 11, 20)) == ("before", 1)
    assert ordering.relation(ev("b", 11, 20), a) == ("after", 1)
    # touching intervals share an instant: not provably ordered
    assert ordering.relation(a, ev("c", 10, 20)) == ("concurrent", 0)
    assert ordering.relation(a, ev("d", 5, 7)) == ("concurrent", -5)
    assert ordering.relation(a, ev("e", 8, 30))[0] == "concurrent"


interval = st.tuples(st.integers(0, 10**6), st.integers(0, 10**4)).map(
    lambda t: (t[0], t[0] + t[1]))


@given(st.lists(interval, min_size=1, max_size=12))
def test_ordering_properties(spans: list[tuple[int, int]]) -> None:
    events = [ev(f"e{i}", lo, hi) for i, (lo, hi) in enumerate(spans)]
    pairs = ordering.pairwise(events)
    assert len(pairs) == len(events) * (len(events) - 1) // 2
    by_id = {e.id: e for e in events}
    pos = {i: n for n, i in enumerate(ordering.presentation_order(events))}
    for a, b, rel, gap in pairs:
        ea, eb = by_id[a], by_id[b]
        assert (rel == "before") == (ea.latest_ns < eb.earliest_ns)
        assert (rel == "after") == (eb.latest_ns < ea.earliest_ns)
        assert (gap > 0) == (rel != "concurrent")
        # swapping the pair mirrors the relation
        mirror = {"before": "after", "after": "before", "concurrent": "concurrent"}[rel]
        assert ordering.relation(eb, ea) == (mirror, gap)
        # the presentation order never contradicts a proven relation
        if rel == "before":
            assert pos[a] < pos[b]
        if rel == "after":
            assert pos[b] < pos[a]


def test_status_shaping_health_and_unknown_source_fields() -> None:
    """Pure: health levels, and rows from newer sources (extra or odd fields) never break it."""
    now = 10**18
    src = {"sources": [{"name": "ptp:eth0", "kind": "ptp", "state": "ok", "usable": True,
                        "port_state": "SLAVE", "age_ns": 5},
                       {"name": "odd", "samples": "many"}], "selected": "ptp"}
    cases = [("synchronized", 1.0, "ok"), ("synchronized", 0.5, "warming_up"),
             ("freerunning", 1.0, "degraded"), ("unsynchronized", 0.2, "unsynchronized")]
    for status, progress, health in cases:
        d = tools.daemon_status({"status": status, "source": "ptp", "warmup_progress": progress,
                                 "last_sync_ns": now - 10**9}, src, now_ns=now)
        assert d.health == health
        assert d.summary.startswith(f"{health}: {status} via ptp")
        assert "1/2 sources usable" in d.summary and "last sync 1.000 s ago" in d.summary
    ptp, odd = d.sources
    assert ptp.model_dump()["port_state"] == "SLAVE" and ptp.age_ns == 5
    assert odd.name == "odd" and "unparsed" in (odd.reason or "")
    never = tools.daemon_status({"status": "unsynchronized", "source": "system"}, {})
    assert never.last_sync is None and "never synced" in never.summary


def test_a_held_over_answer_says_so() -> None:
    """Past the void on a free-running host the answer is the old line held over (source
    ntp, an age), not the system clock: the summary must not call it the system clock."""
    r = {"corrected_time_ns": 1_700_000_000 * 10**9, "system_time_ns": 1_700_000_000 * 10**9,
         "offset_ns": 72_000_000, "bound_ns": 16 * 10**9,
         "earliest_ns": 1_684_000_000 * 10**9, "latest_ns": 1_716_000_000 * 10**9,
         "status": "unsynchronized", "source": "ntp", "as_of_ns": 1_699_992_800 * 10**9,
         "age_ns": 7200 * 10**9, "void_after_ns": 1_699_996_400 * 10**9}
    held = tools.time_result(r).summary
    assert "ntp estimate held over" in held and "system clock" not in held, held
    bare = tools.time_result({**r, "source": "system", "as_of_ns": 0, "age_ns": None,
                              "offset_ns": 0}).summary
    assert "system clock" in bare, bare
    # a collecting answer (before min_samples, void_after still ahead) is not held over
    young = tools.time_result({**r, "bound_ns": 10**6, "age_ns": 10**9,
                               "void_after_ns": r["system_time_ns"] + 3600 * 10**9}).summary
    assert "first measurements" in young and "held over" not in young, young


def test_console_script_declared() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["chronotick-mcp"] == "chronotick_mcp.server:main"


# -- a real MCP client against a live daemon --------------------------------------------------
def test_tools_listed_with_schemas_and_annotations(daemon: DaemonProc) -> None:
    async def body(s: ClientSession) -> None:
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert set(listed) == TOOLS
        for t in listed.values():
            assert t.description and t.annotations is not None
            assert t.annotations.read_only_hint is True
            assert t.annotations.destructive_hint is False
            assert t.input_schema["type"] == "object"
            assert t.output_schema and t.output_schema["type"] == "object"
            assert "summary" in t.output_schema["properties"]
        fut = listed["get_time_with_future_uncertainty"].input_schema
        assert fut["required"] == ["future_seconds"]
        assert fut["properties"]["future_seconds"]["exclusiveMinimum"] == 0
        assert fut["properties"]["future_seconds"]["maximum"] == 3600
        ts = listed["correct_timestamp"].input_schema
        assert ts["properties"]["system_time_ns"]["type"] == "integer"
        ev_schema = listed["order_events"].input_schema
        assert ev_schema["properties"]["events"]["type"] == "array"
        item = ev_schema["$defs"]["Event"]
        assert set(item["required"]) == {"id", "earliest_ns", "latest_ns"}
        for name in ("get_time", "get_time_with_future_uncertainty", "correct_timestamp"):
            props = listed[name].output_schema["properties"]
            for key in ("corrected_time", "corrected_time_ns", "system_time_ns", "offset_ns",
                        "earliest", "latest", "earliest_ns", "latest_ns", "bound_ns", "status",
                        "source", "age_ns", "summary"):
                assert key in props, (name, key)

    run_session(daemon.socket, body)


def test_time_tools_agree_with_the_daemon(daemon: DaemonProc) -> None:
    """get_time / future / correct_timestamp checked against the daemon's own answers."""
    client = Client(daemon.socket)

    async def body(s: ClientSession) -> None:
        # get_time lies between two direct `now` answers and is consistent with both
        before = client.now()
        r = await call_ok(s, "get_time")
        after = client.now()
        check_time_fields(r)
        assert before["system_time_ns"] <= r["system_time_ns"] <= after["system_time_ns"]
        assert r["status"] == before["status"] == "synchronized"
        assert r["source"] == before["source"] == "ntp"
        # true time at each instant lies in each interval, and time only moves forward
        assert r["latest_ns"] >= before["earliest_ns"]
        assert r["earliest_ns"] <= after["latest_ns"]
        assert abs(r["offset_ns"] - before["offset_ns"]) <= before["bound_ns"] + r["bound_ns"]
        assert r["age_ns"] is not None and r["age_ns"] >= 0
        assert r["corrected_time"] in r["summary"] and "synchronized" in r["summary"]

        # the bound projected 30 s ahead, for now + 30 s
        t0 = time.time_ns()
        f = await call_ok(s, "get_time_with_future_uncertainty", {"future_seconds": 30})
        t1 = time.time_ns()
        check_time_fields(f)
        assert f["future_seconds"] == 30
        assert t0 + 30 * 10**9 <= f["system_time_ns"] <= t1 + 30 * 10**9
        assert f["age_ns"] >= 30 * 10**9  # no measurement can exist yet for that instant
        assert f["summary"].startswith("in 30 s:")
        small = await call_ok(s, "get_time_with_future_uncertainty", {"future_seconds": 0.001})
        assert small["future_seconds"] == 0.001
        await call_ok(s, "get_time_with_future_uncertainty", {"future_seconds": 3600})

        # a past timestamp, as the daemon's `at` answers it; a decimal string is exact too
        past = time.time_ns() - 2 * 10**9
        c = await call_ok(s, "correct_timestamp", {"system_time_ns": past})
        direct = client.at(past)
        check_time_fields(c)
        assert c["system_time_ns"] == past
        assert parse_iso_ns(c["system_time"]) == past
        assert c["status"] == direct["status"]
        assert abs(c["offset_ns"] - direct["offset_ns"]) <= c["bound_ns"] + direct["bound_ns"]
        c2 = await call_ok(s, "correct_timestamp", {"system_time_ns": str(past)})
        assert c2["system_time_ns"] == past

    try:
        run_session(daemon.socket, body)
    finally:
        client.close()


def _adapters_mapping(path: str) -> list[int]:
    """PIDs of this process's MCP adapter children (not the daemon, which writes the
    segment) that have ``path`` mapped."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != me or b"chronotick_mcp" not in (entry / "cmdline").read_bytes():
                continue
            if path in (entry / "maps").read_text():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_get_time_reads_the_shared_memory_segment(daemon: DaemonProc) -> None:
    """The adapter answers get_time from the daemon's segment (clock-read cost), not the
    socket: after a call its process has the segment mapped."""
    shm = os.path.join(os.path.dirname(daemon.socket), "shm0")
    assert os.path.exists(shm), daemon.log()

    async def body(s: ClientSession) -> None:
        r = await call_ok(s, "get_time")
        check_time_fields(r)
        assert _adapters_mapping(shm), "the MCP adapter did not map " + shm

    run_session(daemon.socket, body)


def test_daemon_status_and_order_events(daemon: DaemonProc) -> None:
    direct = Client(daemon.socket)

    async def body(s: ClientSession) -> None:
        st = await call_ok(s, "get_daemon_status")
        own = direct.status()
        assert st["health"] in {"ok", "warming_up"}  # synchronized; warm-up may still run
        assert st["status"] == "synchronized" and st["source"] == "ntp"
        assert st["pid"] == daemon.proc.pid == own["pid"]
        assert 0 <= st["warmup_progress"] <= 1
        assert st["uptime_s"] > 0
        assert st["last_sync_ns"] and parse_iso_ns(st["last_sync"]) == st["last_sync_ns"]
        assert 0 <= st["last_sync_age_s"] < 60
        assert st["protocol_version"] == 1
        assert isinstance(st["models"], dict)
        [src] = st["sources"]
        assert src["name"].startswith("ntp:127.0.0.1:")
        assert src["state"] == "ok" and src["selected"] is True and src["samples"] >= 3
        assert st["selected_source"] == "ntp"
        assert "1/1 sources usable" in st["summary"]

        # order two real get_time answers taken in sequence, plus an overlapping event
        t1 = await call_ok(s, "get_time")
        await anyio.sleep(0.01 + 2 * t1["bound_ns"] / 1e9)  # leave room for the intervals
        t2 = await call_ok(s, "get_time")
        events = [
            {"id": "write", "earliest_ns": t1["earliest_ns"], "latest_ns": t1["latest_ns"]},
            {"id": "read", "earliest_ns": t2["earliest_ns"], "latest_ns": t2["latest_ns"]},
            {"id": "remote", "earliest_ns": t1["corrected_time_ns"],
             "latest_ns": t2["corrected_time_ns"]},
        ]
        o = await call_ok(s, "order_events", {"events": events})
        rel = {(p["a"], p["b"]): p["relation"] for p in o["pairs"]}
        assert rel == {("write", "read"): "before", ("write", "remote"): "concurrent",
                       ("read", "remote"): "concurrent"}
        assert o["order"] == ["write", "remote", "read"]
        assert (o["ordered_pairs"], o["concurrent_pairs"]) == (1, 2)
        o = await call_ok(s, "order_events", {"events": events[1::-1]})
        assert o["pairs"] == [{"a": "read", "b": "write", "relation": "after",
                               "gap_ns": t2["earliest_ns"] - t1["latest_ns"]}]
        assert o["summary"] == "2 events, totally ordered: write < read"
        one = await call_ok(s, "order_events", {"events": [{"id": 7, "earliest_ns": 1,
                                                            "latest_ns": 1}]})
        assert one["pairs"] == [] and one["order"] == ["7"]

    try:
        run_session(daemon.socket, body)
    finally:
        direct.close()


def test_bad_arguments_are_invalid_params(daemon: DaemonProc) -> None:
    async def body(s: ClientSession) -> None:
        fut = "get_time_with_future_uncertainty"
        for bad in (0, -1, 3600.5, True, "soon", None):
            err = await call_invalid(s, fut, {"future_seconds": bad})
            assert "future_seconds" in err.message
        err = await call_invalid(s, fut, {})
        assert "future_seconds" in err.message and "required" in err.message.lower()
        for bad in (0, -5, 2**63, 1.5, "yesterday", False):
            err = await call_invalid(s, "correct_timestamp", {"system_time_ns": bad})
            assert "system_time_ns" in err.message
        good = {"id": "a", "earliest_ns": 1, "latest_ns": 2}
        for events in ([], [good, good], [{"id": "b", "earliest_ns": 5, "latest_ns": 4}],
                       [{"id": "c", "earliest_ns": 5}], [{**good, "extra": 1}],
                       [{"id": "", "earliest_ns": 1, "latest_ns": 2}],
                       [{"id": f"e{i}", "earliest_ns": i, "latest_ns": i} for i in range(101)],
                       "not a list"):
            err = await call_invalid(s, "order_events", {"events": events})
            assert "events" in err.message
        assert "appears twice" in (await call_invalid(s, "order_events",
                                                      {"events": [good, good]})).message
        err = await call_invalid(s, "no_such_tool", {})
        assert "no_such_tool" in err.message
        # the adapter is unharmed
        await s.send_ping()
        check_time_fields(await call_ok(s, "get_time"))

    run_session(daemon.socket, body)


def test_no_numpy_or_torch_in_the_adapter(daemon: DaemonProc, tmp_path: Path) -> None:
    """Runs the adapter under ``-X importtime`` through a whole session (socket from
    CHRONOTICK_SOCKET) and checks that numpy and torch were never imported."""
    log = tmp_path / "stderr.txt"

    async def body(s: ClientSession) -> None:
        for name, args in (("get_time", {}), ("get_daemon_status", {}),
                           ("get_time_with_future_uncertainty", {"future_seconds": 5}),
                           ("correct_timestamp", {"system_time_ns": time.time_ns() - 10**9}),
                           ("order_events", {"events": [{"id": "a", "earliest_ns": 1,
                                                         "latest_ns": 2}]})):
            await call_ok(s, name, args)

    with log.open("w") as errlog:
        run_session(None, body, python_flags=("-X", "importtime"), errlog=errlog,
                    env={"CHRONOTICK_SOCKET": daemon.socket})
    modules = [line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines()
               if line.startswith("import time:")]
    assert "chronotick_mcp.server" in modules  # the trace is real
    heavy = sorted({m for m in modules if m.split(".")[0] in {"numpy", "torch", "chronos",
                                                               "pandas", "chronotickd"}})
    assert heavy == []


def test_argument_errors_as_results_when_asked(tmp_path: Path) -> None:
    """--argument-errors result: the SEP-1303 style, a tool result with isError."""
    async def body(s: ClientSession) -> None:
        res = await s.call_tool("get_time_with_future_uncertainty", {"future_seconds": 0})
        assert res.is_error and "future_seconds" in res.content[0].text
        await call_invalid(s, "no_such_tool", {})  # unknown tools stay protocol errors

    run_session(str(tmp_path / "none.sock"), body, extra_args=("--argument-errors", "result"))


# -- daemon down, restarted, down again: the adapter reports and reconnects -------------------
def test_daemon_down_then_up_then_down(chronyd: Any) -> None:
    work = Path(tempfile.mkdtemp(prefix="ct-mcp-"))
    sock = str(work / "ct.sock")  # where daemon_process(workdir=work) will listen

    async def expect_down(s: ClientSession) -> None:
        for name, args in (("get_time", {}), ("get_daemon_status", {}),
                           ("get_time_with_future_uncertainty", {"future_seconds": 1}),
                           ("correct_timestamp", {"system_time_ns": time.time_ns()})):
            res = await s.call_tool(name, args)
            text = res.content[0].text
            assert res.is_error, (name, text)
            assert sock in text and "start the daemon" in text, text
            assert "chronotickd" in text

    async def body(s: ClientSession) -> None:
        await expect_down(s)
        # validation happens before the daemon is asked; pure tools need no daemon
        await call_invalid(s, "get_time_with_future_uncertainty", {"future_seconds": -1})
        o = await call_ok(s, "order_events", {"events": [
            {"id": "x", "earliest_ns": 1, "latest_ns": 2},
            {"id": "y", "earliest_ns": 3, "latest_ns": 4}]})
        assert o["pairs"][0]["relation"] == "before"
        with daemon_process(workdir=work, ntp__servers=[chronyd.server]) as d:
            assert d.socket == sock
            r = await call_ok(s, "get_time")  # reconnects on the next call
            check_time_fields(r)
            pid = (await call_ok(s, "get_daemon_status"))["pid"]
            assert pid == d.proc.pid, d.log()
            kill_pid(d.proc)
            await expect_down(s)
        with daemon_process(workdir=work, ntp__servers=[chronyd.server]) as d2:
            # the adapter held a connection to the old daemon: it must reconnect by itself
            assert (await call_ok(s, "get_daemon_status"))["pid"] == d2.proc.pid, d2.log()
        await s.send_ping()

    try:
        run_session(sock, body)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_malformed_input_does_not_kill_the_adapter(tmp_path: Path) -> None:
    """Garbage on stdin is answered or skipped; the next valid request is still served."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronotick_mcp", "--socket", str(tmp_path / "none.sock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=REPO, env={**os.environ, "PYTHONPATH": PYTHONPATH})
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "raw", "version": "0"}}}
        lines = ["this is not json", json.dumps({"jsonrpc": "2.0", "id": 99}),
                 json.dumps([1, 2, 3]), json.dumps(init)]
        out, _ = proc.communicate("\n".join(lines) + "\n", timeout=30)
        replies = [json.loads(line) for line in out.splitlines() if line.strip()]
        ok = [r for r in replies if r.get("id") == 1 and "result" in r]
        assert ok, replies
        assert ok[0]["result"]["serverInfo"]["name"] == "chronotick"
    finally:
        kill_pid(proc)


# -- the official MCP time server's tools (get_current_time, convert_time) --------------------
def fake_now(utc: str, bound_ns: int) -> dict[str, Any]:
    """A `now` result at the UTC instant ``utc`` (whole seconds) with the given bound."""
    mid = int(datetime.fromisoformat(utc).replace(tzinfo=UTC).timestamp()) * 10**9
    return {"corrected_time_ns": mid, "system_time_ns": mid, "offset_ns": 0,
            "bound_ns": bound_ns, "earliest_ns": mid - bound_ns, "latest_ns": mid + bound_ns,
            "status": "synchronized", "source": "ntp", "age_ns": 10**9}


def test_current_time_in_a_zone_carries_the_bound() -> None:
    r = tools.current_time(fake_now("2026-07-01T12:00:00", 250_000), "Europe/Paris")
    assert r.datetime == "2026-07-01T14:00:00+02:00"  # the reference server's format
    assert r.day_of_week == "Wednesday" and r.is_dst is True and r.timezone == "Europe/Paris"
    assert r.earliest == "2026-07-01T13:59:59.999750000+02:00"
    assert r.latest == "2026-07-01T14:00:00.000250000+02:00"
    assert r.datetime_ns == "2026-07-01T14:00:00.000000000+02:00"
    assert r.date_certain and r.bound_ns == 250_000
    # 2 ms around local midnight in Tokyo: the date itself is uncertain, and said so
    edge = tools.current_time(fake_now("2026-07-01T15:00:00", 2_000_000), "Asia/Tokyo")
    assert edge.earliest.startswith("2026-07-01T23:59:59.998") and \
        edge.latest.startswith("2026-07-02T00:00:00.002")
    assert not edge.date_certain and "date is uncertain" in edge.summary
    # a zone with a 45-minute offset, winter time
    np_ = tools.current_time(fake_now("2026-01-15T00:00:00", 1000), "Asia/Kathmandu")
    assert np_.datetime == "2026-01-15T05:45:00+05:45" and np_.is_dst is False


def test_convert_time_like_the_reference_server() -> None:
    now = fake_now("2026-07-01T08:00:00", 100_000)
    c = tools.convert_time(now, "Europe/Paris", "16:30", "Asia/Tokyo")
    assert c.source.datetime == "2026-07-01T16:30:00+02:00"
    assert c.target.datetime == "2026-07-01T23:30:00+09:00"
    assert c.time_difference == "+7.0h" and c.target.is_dst is False
    assert c.date_certain and c.reference_time == "2026-07-01T08:00:00.000000000Z"
    k = tools.convert_time(now, "UTC", "00:00", "Asia/Kathmandu")
    assert k.time_difference == "+5.75h"
    # "today" near midnight in the source zone, with a bound spanning it: flagged
    late = tools.convert_time(fake_now("2026-07-01T21:59:59", 5 * 10**9), "Europe/Paris",
                              "09:00", "UTC")
    assert not late.date_certain
    # a time skipped by the spring-forward change (EU: 2026-03-29, 02:00 → 03:00)
    with pytest.raises(ToolError, match="does not exist in Europe/Paris on 2026-03-29"):
        tools.convert_time(fake_now("2026-03-29T10:00:00", 1000), "Europe/Paris", "02:30",
                           "UTC")


@pytest.mark.parametrize("bad", ["Mars/Olympus_Mons", "Europe", "../../etc/passwd",
                                 "/usr/share/zoneinfo/UTC", "Europe/Paris\x00", " UTC"])
def test_bad_zone_names_are_clear_errors(bad: str) -> None:
    with pytest.raises(ToolError, match="not a known IANA time zone name") as info:
        tools.current_time(fake_now("2026-07-01T12:00:00", 1), bad)
    # our message only: none of zoneinfo's own (some carry file paths)
    assert str(info.value) == (f"invalid timezone {bad!r}: not a known IANA time zone name "
                               "(e.g. 'Europe/Paris', 'America/New_York', 'UTC')")


@pytest.mark.parametrize("bad", ["25:00", "9", "16:30:00", "noon", "16h30", ""])
def test_bad_times_are_clear_errors(bad: str) -> None:
    with pytest.raises(ToolError, match="expected HH:MM"):
        tools.convert_time(fake_now("2026-07-01T12:00:00", 1), "UTC", bad, "Asia/Tokyo")


def test_zone_tools_over_mcp(daemon: DaemonProc) -> None:
    client = Client(daemon.socket)

    async def body(s: ClientSession) -> None:
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert listed["get_current_time"].input_schema["required"] == ["timezone"]
        assert listed["convert_time"].input_schema["required"] == [
            "source_timezone", "time", "target_timezone"]
        before = client.now()
        r = await call_ok(s, "get_current_time", {"timezone": "Europe/Paris"})
        after = client.now()
        assert r["timezone"] == "Europe/Paris" and r["status"] == "synchronized"
        assert before["corrected_time_ns"] <= r["corrected_time_ns"] <= after["corrected_time_ns"]
        assert 0 <= r["earliest_ns"] - (r["corrected_time_ns"] - r["bound_ns"]) <= 1
        assert 0 <= (r["corrected_time_ns"] + r["bound_ns"]) - r["latest_ns"] <= 1
        assert r["earliest_ns"] > 0
        offset = r["datetime"][19:]
        assert offset in ("+01:00", "+02:00") and r["earliest"].endswith(offset)
        assert r["earliest"] <= r["datetime_ns"] <= r["latest"]  # same offset: text order
        c = await call_ok(s, "convert_time", {"source_timezone": "Europe/Paris",
                                              "time": "16:30", "target_timezone": "Asia/Tokyo"})
        assert c["source"]["datetime"][11:16] == "16:30"
        assert c["time_difference"] in ("+7.0h", "+8.0h")
        assert c["status"] == "synchronized" and c["bound_ns"] > 0
        for name, args, text in (
                ("get_current_time", {"timezone": "Mars/Olympus_Mons"}, "invalid timezone"),
                ("convert_time", {"source_timezone": "UTC", "time": "25:61",
                                  "target_timezone": "Asia/Tokyo"}, "expected HH:MM"),
                ("convert_time", {"source_timezone": "UTC", "time": "10:00",
                                  "target_timezone": "Nowhere/Town"}, "Nowhere/Town")):
            res = await s.call_tool(name, args)
            assert res.is_error and text in res.content[0].text, (name, res.content)
        err = await call_invalid(s, "get_current_time", {})
        assert "timezone" in err.message
        await call_invalid(s, "get_current_time", {"timezone": ""})

    try:
        run_session(daemon.socket, body)
    finally:
        client.close()


# -- the real MCP Inspector CLI (npx) ---------------------------------------------------------
INSPECTOR = ["npx", "-y", "-p", "node@22", "-p", "@modelcontextprotocol/inspector",
             "mcp-inspector", "--cli"]


def inspector(sock: str, *method: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [*INSPECTOR, "-e", f"PYTHONPATH={PYTHONPATH}", "--", sys.executable, "-m",
           "chronotick_mcp", "--socket", sock, *method]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_mcp_inspector_cli_lists_and_calls_the_zone_tools(daemon: DaemonProc) -> None:
    """The MCP Inspector's CLI (a real, independent client) lists the tools and calls
    get_current_time with Europe/Paris. Skipped only when npx cannot fetch the package."""
    if shutil.which("npx") is None:
        pytest.skip("npx not installed (Node.js); the Inspector CLI needs it")
    listed = inspector(daemon.socket, "--method", "tools/list")
    if listed.returncode != 0 and re.search(r"E404|ENOTFOUND|EAI_AGAIN|ECONNREFUSED|"
                                            r"network|fetch failed", listed.stderr, re.I):
        pytest.skip(f"npx cannot fetch the Inspector: {listed.stderr.strip()[-300:]}")
    assert listed.returncode == 0, listed.stderr
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert {"get_current_time", "convert_time"} <= names and names == TOOLS
    called = inspector(daemon.socket, "--method", "tools/call", "--tool-name",
                       "get_current_time", "--tool-arg", "timezone=Europe/Paris")
    assert called.returncode == 0, called.stderr
    res = json.loads(called.stdout)
    assert not res.get("isError"), res
    data = res["structuredContent"]
    assert data["timezone"] == "Europe/Paris" and data["bound_ns"] > 0
    assert data["earliest"] < data["latest"] and data["status"] in STATUSES
