"""NTP source: per-sample filters on ntplib-like replies, KoD handling, per-round selection,
and the real thing against a loopback chronyd."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import ntplib
import pytest
from support import free_udp_port

from chronotickd.core.measurement import Measurement
from chronotickd.core.timebase import ClockReading
from chronotickd.sources import clocks
from chronotickd.sources.ntp import (
    NtpSettings,
    NtpSource,
    check_response,
    kod_code,
    parse_server,
)


def ref_id(code: str) -> int:
    return int.from_bytes(code.encode().ljust(4, b"\0"), "big")


@dataclass
class FakeResponse:
    """The attributes of ``ntplib.NTPStats`` the source reads."""

    offset: float = 0.0005
    delay: float = 0.0004
    stratum: int = 2
    leap: int = 0
    root_delay: float = 0.001
    root_dispersion: float = 0.0005
    ref_id: int = 0x7F000001
    orig_time: float = 1_700_000_000.0
    dest_time: float = 1_700_000_000.0004


SETTINGS = NtpSettings(servers=["a"], max_delay_s=0.5, max_root_distance_s=1.0)


# -- parse_server ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,expected", [
    ("pool.ntp.org", ("pool.ntp.org", 123)),
    ("127.0.0.1:11123", ("127.0.0.1", 11123)),
    ("[::1]:4123", ("::1", 4123)),
    ("[::1]", ("::1", 123)),
    ("::1", ("::1", 123)),
])
def test_parse_server(spec: str, expected: tuple[str, int]) -> None:
    assert parse_server(spec) == expected


# -- per-sample filters ------------------------------------------------------------------------
def test_good_reply_passes() -> None:
    assert check_response(FakeResponse(), SETTINGS) is None


def test_kod_code_decodes_ref_id() -> None:
    assert kod_code(FakeResponse(stratum=0, ref_id=ref_id("RATE"))) == "RATE"
    assert kod_code(FakeResponse(stratum=0, ref_id=ref_id("DENY"))) == "DENY"
    assert kod_code(FakeResponse(stratum=0, ref_id=0)) == ""


@pytest.mark.parametrize("resp,words", [
    (FakeResponse(stratum=0, ref_id=ref_id("RATE")), "kiss-o'-death RATE"),
    (FakeResponse(stratum=0, ref_id=ref_id("DENY")), "kiss-o'-death DENY"),
    (FakeResponse(stratum=0, ref_id=0), "kiss-o'-death ?"),
    (FakeResponse(leap=3), "unsynchronized"),
    (FakeResponse(stratum=16), "unsynchronized"),
    (FakeResponse(delay=0.8), "round trip 800.000 ms"),
    (FakeResponse(delay=-0.001), "round trip"),
    (FakeResponse(offset=math.nan), "non-finite"),
    (FakeResponse(delay=math.inf), "non-finite"),
    (FakeResponse(root_dispersion=-1.0), "absurd root"),
    (FakeResponse(root_delay=100.0), "absurd root"),
    (FakeResponse(root_delay=1.0, root_dispersion=0.9), "root distance 1.400 s over 1 s"),
])
def test_bad_replies_are_rejected_with_a_reason(resp: FakeResponse, words: str) -> None:
    problem = check_response(resp, SETTINGS)
    assert problem is not None and words in problem


# -- one round with a scripted client -------------------------------------------------------------
class ScriptedClient:
    """Stands in for ``ntplib.NTPClient``: answers per host from a table."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def request(self, host: str, port: int = 123, version: int = 4,
                timeout: float = 1.0) -> FakeResponse:
        with self.lock:
            self.asked.append(host)
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


EPOCH = 1_700_000_000.0


def scripted_source(answers: dict[str, Any], readings: list[ClockReading] | None = None
                    ) -> tuple[NtpSource, list[Measurement]]:
    """A source whose clocks read raw 200 s with REALTIME = raw + EPOCH (δ = 0), or the
    scripted ``readings`` (before, after, before, after, ...)."""
    got: list[Measurement] = []
    script = iter(readings or [])

    def read() -> ClockReading:
        return next(script, ClockReading(200.0, EPOCH + 200.0, 0.0))

    src = NtpSource(NtpSettings(servers=list(answers), warmup_s=0, interval_s=10),
                    got.append, monotonic=lambda: 1000.0, epoch=EPOCH, read_clock=read)
    src._client = ScriptedClient(answers)  # type: ignore[assignment]
    return src, got


def test_realtime_moving_during_the_exchange_is_converted_and_widens() -> None:
    """θ = ntplib's offset + δ; a δ change of 2 ms during the exchange (someone stepped
    REALTIME) makes the bound 1 ms wider."""
    before = ClockReading(200.0, EPOCH + 200.0 + 0.010, 0.0)  # δ = +10 ms
    after = ClockReading(200.001, EPOCH + 200.001 + 0.012, 0.0)  # δ = +12 ms
    src, got = scripted_source({"a": FakeResponse(offset=-0.011)}, [before, after])
    src.poll_round()
    m = got[0]
    assert m.t == pytest.approx(200.0005)
    assert m.offset == pytest.approx(0.0, abs=1e-6)  # −11 ms + mean δ 11 ms
    assert m.bound == pytest.approx(0.0004 / 2 + 0.001 / 2 + 0.0005 + 0.001, abs=1e-6)


def test_leap_indicator_travels_in_the_measurement() -> None:
    src, got = scripted_source({"a": FakeResponse(offset=0.001, leap=1)})
    src.poll_round()
    assert got[0].leap == 1


def row(src: NtpSource, name: str) -> dict[str, Any]:
    return next(r for r in src.describe() if r["name"] == f"ntp:{name}")


def test_round_outvotes_a_falseticker_and_keeps_bounds() -> None:
    src, got = scripted_source({
        "a": FakeResponse(offset=0.0010), "b": FakeResponse(offset=0.0012),
        "c": FakeResponse(offset=0.2500),
    })
    survivors = src.poll_round()
    assert {m.source for m in survivors} == {"ntp:a", "ntp:b"} == {m.source for m in got}
    assert row(src, "c")["state"] == "falseticker"
    assert "majority" in row(src, "c")["reason"]
    m = got[0]
    # RFC 5905 bound: half the round trip + half the root delay + root dispersion
    assert m.bound == pytest.approx(0.0004 / 2 + 0.001 / 2 + 0.0005)
    assert m.t == 200.0  # raw: the midpoint of the clock reads around the exchange
    assert m.offset == pytest.approx(0.0010)  # δ = 0: θ is ntplib's offset
    assert m.kind == "ntp" and m.stratum == 2


def test_round_with_two_disagreeing_servers_sends_nothing() -> None:
    src, got = scripted_source({"a": FakeResponse(offset=0.0), "b": FakeResponse(offset=0.5)})
    assert src.poll_round() == [] and got == []
    assert row(src, "a")["state"] == row(src, "b")["state"] == "falseticker"
    assert "no majority" in row(src, "a")["reason"]


def test_kod_deny_stops_polling_that_server(caplog: pytest.LogCaptureFixture) -> None:
    src, got = scripted_source({"a": FakeResponse(stratum=0, ref_id=ref_id("DENY")),
                                "b": FakeResponse()})
    src.poll_round()
    assert row(src, "a")["state"] == "stopped"
    assert "kiss-o'-death DENY" in caplog.text
    src._client.asked.clear()
    src.poll_round()
    assert src._client.asked == ["b"]
    assert len(got) == 2


def test_kod_rate_backs_off() -> None:
    src, _ = scripted_source({"a": FakeResponse(stratum=0, ref_id=ref_id("RATE"))})
    src.poll_round()
    server = src.servers[0]
    assert server.state == "rejected" and "RATE" in server.reason
    assert server.backoff == 2.0
    assert server.next_poll > 1000.0  # skipped next round
    src._client.asked.clear()
    src.poll_round()
    assert src._client.asked == []


def test_unreachable_servers_log_one_line(caplog: pytest.LogCaptureFixture) -> None:
    src, got = scripted_source({"a": ntplib.NTPException("No response received from a.")})
    for _ in range(3):
        src.poll_round()
    warnings = [r for r in caplog.records if "no NTP server usable" in r.getMessage()]
    assert len(warnings) == 1
    assert "No response received" in warnings[0].getMessage()
    assert row(src, "a")["state"] == "unreachable" and got == []


def test_warmup_then_operational_interval() -> None:
    clock = [0.0]
    src = NtpSource(NtpSettings(servers=["a"], warmup_s=100, warmup_interval_s=1,
                                interval_s=10), lambda m: None, monotonic=lambda: clock[0])
    assert src.interval() == 1 and src.warmup_progress() == 0.0
    clock[0] = 50.0
    assert src.warmup_progress() == pytest.approx(0.5)
    clock[0] = 100.0
    assert src.interval() == 10 and src.warmup_progress() == 1.0


# -- real chronyd ------------------------------------------------------------------------------
def test_real_chronyd_round(chronyd: Any) -> None:
    dead = f"127.0.0.1:{free_udp_port()}"  # nothing listens there
    got: list[Measurement] = []
    epoch = clocks.start_epoch()
    src = NtpSource(NtpSettings(servers=[chronyd.server, dead], timeout_s=0.3), got.append,
                    epoch=epoch)
    try:
        survivors = src.poll_round()
    finally:
        src.stop()
    assert [m.source for m in survivors] == [f"ntp:{chronyd.server}"]
    m = survivors[0]
    # chronyd serves this very clock: θ = reference − (raw + epoch) is δ = REALTIME − RAW − epoch
    assert abs(m.offset - clocks.read().delta(epoch)) < 0.001
    assert 0 <= m.delay < 0.005
    assert m.bound >= m.delay / 2
    assert row(src, dead)["state"] == "unreachable"
    assert row(src, chronyd.server)["state"] == "ok"


def test_real_chronyd_thread_delivers_without_blocking(chronyd: Any) -> None:
    arrived = threading.Event()
    got: list[Measurement] = []

    def on_m(m: Measurement) -> None:
        got.append(m)
        if len(got) >= 2:
            arrived.set()

    src = NtpSource(NtpSettings(servers=[chronyd.server], warmup_s=10, warmup_interval_s=0.2,
                                timeout_s=0.5), on_m)
    src.start()
    try:
        assert arrived.wait(10), "no measurements from chronyd within 10 s"
    finally:
        src.stop()
    assert src._thread is not None and not src._thread.is_alive()
    delta = clocks.read().delta(src.epoch)  # θ is δ here (chronyd serves this clock)
    assert all(abs(m.offset - delta) < 0.001 for m in got)
