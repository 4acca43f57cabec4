"""Prometheus metrics and the `tracking` view, end to end: a real chronotickd measuring a
loopback chronyd, scraped over HTTP and parsed with prometheus-client's own text parser."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    PYTHONPATH,
    REPO,
    DaemonProc,
    cli,
    daemon_process,
    scrape,
    wait_for,
    write_config,
)
from support import metric as value

from chronotick_client import Client
from chronotick_client.cli import render_tracking
from chronotickd.config import Config, ConfigError
from chronotickd.core.engine import Engine
from chronotickd.metrics import ChronoTickCollector
from chronotickd.publish import Publisher

DOC = REPO / "docs" / "metrics.md"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def documented() -> set[str]:
    return set(re.findall(r"^\| `(chronotick_[a-z_]+)`", DOC.read_text(), re.M))


@pytest.fixture(scope="module")
def daemon(chronyd: Any) -> Iterator[tuple[DaemonProc, int]]:
    port = free_tcp_port()
    with daemon_process(ntp__servers=[chronyd.server],
                        metrics__listen=f"127.0.0.1:{port}") as d:
        with Client(d.socket) as c:
            wait_for(lambda: c.now()["status"] == "synchronized", 20, "synchronized")
        yield d, port


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["9123", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
                                 ":9123", "[1.2.3.4]:9123", "a b:9123", "127.0.0.1:x"])
def test_bad_listen_address_is_a_config_error_naming_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        Config({"metrics.listen": bad})


@pytest.mark.parametrize("good", ["", "127.0.0.1:9123", "[::1]:9123", "localhost:9123"])
def test_good_listen_addresses(good: str) -> None:
    assert Config({"metrics.listen": good})["metrics.listen"] == good


def test_metrics_off_by_default() -> None:
    assert Config({})["metrics.listen"] == ""


def _start(tmp_path: Path, prelude: str, **cfg: Any) -> subprocess.CompletedProcess:
    conf = write_config(tmp_path, **cfg)
    code = (f"{prelude}\nimport sys\nfrom chronotickd.daemon import main\n"
            f"sys.exit(main(['--config', {str(conf)!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=REPO, env={"PYTHONPATH": PYTHONPATH})


def test_enabled_without_the_extra_names_the_extra(tmp_path: Path) -> None:
    r = _start(tmp_path, "import sys; sys.modules['prometheus_client'] = None",
               metrics__listen=f"127.0.0.1:{free_tcp_port()}")
    assert r.returncode != 0
    assert "chronotick[metrics]" in r.stderr and "metrics.listen" in r.stderr, r.stderr


def test_address_in_use_names_the_key(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = _start(tmp_path, "", metrics__listen=f"127.0.0.1:{busy.getsockname()[1]}")
    assert r.returncode != 0
    assert "metrics.listen" in r.stderr and "in use" in r.stderr, r.stderr


# -- the collector on its own (no daemon) -------------------------------------------------------
class FakeDaemon:
    def __init__(self, models: dict[str, Any] | None = None) -> None:
        self.publisher = Publisher(Engine().snapshot(time.time()))
        self.publisher.publish(status={"steps": 2, "models": models or {}})
        self.handlers = type("H", (), {"op_counts": {"now": 5}, "error_counts": {}})()
        self.server = type("S", (), {"active": 1, "rejected": 3, "bad_frames": 0,
                                     "timeouts": 0})()


def collected(d: FakeDaemon) -> dict[str, list[Any]]:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(ChronoTickCollector(d))  # type: ignore[arg-type]
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_unsynchronized_daemon_and_model_metrics() -> None:
    models = {"short": {"weight": 0.25, "inference_p50_ms": 2.0, "inference_p99_ms": 7.5},
              "long": {"loaded": False, "reason": "no torch"}, "engine": {"weight": 0.75}}
    m = collected(FakeDaemon(models))
    assert value(m, "chronotick_status", status="unsynchronized") == 1
    assert value(m, "chronotick_status", status="synchronized") == 0
    assert value(m, "chronotick_bound_seconds") == 16.0  # the kernel's unsynchronized maxerror
    assert value(m, "chronotick_last_sample_age_seconds") == math.inf
    assert value(m, "chronotick_leap", state="unknown") == 1
    assert value(m, "chronotick_clock_steps_total") == 2
    assert value(m, "chronotick_requests_total", op="now") == 5
    assert value(m, "chronotick_errors_total", code="busy") == 3
    assert value(m, "chronotick_model_weight_ratio", model="short") == 0.25
    assert value(m, "chronotick_model_weight_ratio", model="engine") == 0.75
    assert value(m, "chronotick_model_inference_seconds", model="short", quantile="0.99") \
        == pytest.approx(0.0075)
    assert not [s for s in m.get("chronotick_model_weight_ratio", [])
                if s.labels["model"] == "long"]


def test_every_exported_name_is_documented_and_conventional() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(ChronoTickCollector(FakeDaemon()))  # type: ignore[arg-type]
    exported = set()
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        assert name.startswith("chronotick_"), name
        assert fam.type != "counter" or name.endswith("_total"), name
        exported.add(name)
    assert exported == documented(), (f"exported, not in docs/metrics.md: "
                                      f"{exported - documented()}; documented, not exported: "
                                      f"{documented() - exported}")


def test_render_tracking_unknown_leap_and_missing_fields() -> None:
    text = render_tracking({"status": "unsynchronized", "source": "system", "offset_ns": 0,
                            "bound_ns": 16_000_000_000})
    assert "Leap status     : unknown" in text
    assert "Frequency       : -" in text and "Last update     : never" in text


# -- against a real daemon ----------------------------------------------------------------------
CLI_READ_JITTER_S = 2e-6


def test_scrape_agrees_with_now_json(daemon: tuple[DaemonProc, int]) -> None:
    """scrape, `now --json`, scrape: with no new measurement published in between, the
    served offset and bound are one line and one growing bound evaluated at three instants,
    so `now`'s values lie between the two scrapes', up to the jitter of the clock reads each
    answer makes for itself (REALTIME and MONOTONIC_RAW read back to back: a few hundred ns
    in Python, CLI_READ_JITTER_S allows 2 µs; the bounds are tens of µs or more). `now` may
    come from the shared-memory segment (the CLI's default), read in another process. A
    refit in between is possible (a poll every 0.5 s here): then the triple is taken again."""
    d, port = daemon
    for _attempt in range(8):
        before = scrape(port)
        r = cli("now", "--json", socket_path=d.socket)
        after = scrape(port)
        assert r.returncode == 0, r.stderr
        now = json.loads(r.stdout)
        offs = sorted(value(m, "chronotick_offset_seconds") for m in (before, after))
        bounds = sorted(value(m, "chronotick_bound_seconds") for m in (before, after))
        tol = CLI_READ_JITTER_S
        if (offs[0] - tol <= now["offset_ns"] / 1e9 <= offs[1] + tol
                and bounds[0] - tol <= now["bound_ns"] / 1e9 <= bounds[1] + tol):
            break
    else:
        raise AssertionError(f"now {now} outside the scrapes' offsets {offs} / bounds {bounds}")
    print(f"\nscrape offset {offs[0]:.9f}..{offs[1]:.9f} s, bound {bounds[0]:.9f}.."
          f"{bounds[1]:.9f} s; now --json offset {now['offset_ns'] / 1e9:.9f} s, bound "
          f"{now['bound_ns'] / 1e9:.9f} s (attempt {_attempt + 1})")
    assert now["status"] == "synchronized"
    assert value(after, "chronotick_status", status="synchronized") == 1
    for name in ("chronotick_frequency_ratio", "chronotick_frequency_error_ratio",
                 "chronotick_residual_seconds", "chronotick_poll_interval_seconds"):
        assert math.isfinite(value(after, name)), name
    assert value(after, "chronotick_last_sample_age_seconds") < 10
    assert value(after, "chronotick_leap", state="none") == 1  # chronyd's leap indicator 0
    (src,) = [s.labels["source"] for s in after["chronotick_source_selected"] if s.value == 1]
    assert src.startswith("ntp:127.0.0.1:")
    assert value(after, "chronotick_source_reachability_ratio", source=src) > 0
    assert 0 < value(after, "chronotick_source_delay_seconds", source=src) < 0.1
    assert value(after, "process_resident_memory_bytes") > 1e6


def test_tracking_json_matches_scrape_and_has_frequency_and_leap(
        daemon: tuple[DaemonProc, int]) -> None:
    d, port = daemon
    r = cli("tracking", "--json", socket_path=d.socket)
    m = scrape(port)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["status"] == "synchronized" and t["reference"].startswith("ntp:127.0.0.1:")
    assert t["leap"] == "none" and t["stratum"] == 1
    assert isinstance(t["frequency_ppm"], float) and t["frequency_error_ppm"] > 0
    assert t["frequency_ppm"] == pytest.approx(value(m, "chronotick_frequency_ratio") * 1e6,
                                               abs=max(2 * t["frequency_error_ppm"], 0.5))
    assert t["root_delay_ns"] == 0 and t["root_dispersion_ns"] >= 0  # a stratum-1 chronyd
    assert t["poll_interval_s"] == value(m, "chronotick_poll_interval_seconds")
    assert t["samples"] >= 3 and t["age_ns"] < 10e9 and t["bound_ns"] > 0
    assert t["time_axis"] in ("realtime", "monotonic_raw")
    text = cli("tracking", socket_path=d.socket).stdout
    for label in ("Reference", "Frequency", "Freq error", "Residual", "Root delay",
                  "Root dispersion", "Leap status", "Last update", "Bound", "Poll interval"):
        assert re.search(rf"^{label}\s+:", text, re.M), (label, text)


def test_requests_and_errors_are_counted(daemon: tuple[DaemonProc, int]) -> None:
    d, port = daemon
    m0 = scrape(port)
    with Client(d.socket) as c:
        for _ in range(25):
            c.now()
        c.tracking()
        with pytest.raises(Exception, match="bad_request"):
            c.call("no_such_op")
    m1 = scrape(port)

    def delta(name: str, **labels: str) -> float:
        before = [s.value for s in m0.get(name, [])
                  if all(s.labels.get(k) == v for k, v in labels.items())]
        return value(m1, name, **labels) - (before[0] if before else 0.0)

    assert delta("chronotick_requests_total", op="now") >= 25
    assert delta("chronotick_requests_total", op="tracking") >= 1
    assert delta("chronotick_requests_total", op="other") >= 1
    assert delta("chronotick_errors_total", code="bad_request") >= 1


def test_a_stalled_scraper_does_not_block_queries(daemon: tuple[DaemonProc, int]) -> None:
    d, port = daemon
    with socket.create_connection(("127.0.0.1", port)) as stalled:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the request
        with Client(d.socket, timeout=2) as c:
            assert c.now()["status"] == "synchronized"
        assert value(scrape(port), "chronotick_status", status="synchronized") == 1


def test_reload_reports_metrics_listen_as_restart_required(
        daemon: tuple[DaemonProc, int]) -> None:
    d, port = daemon
    original = d.config.read_text()
    try:
        d.config.write_text(original.replace(f"127.0.0.1:{port}",
                                             f"127.0.0.1:{free_tcp_port()}"))
        with Client(d.socket) as c:
            r = c.call("reload")
        assert r["restart_required"] == ["metrics.listen"], r
        assert value(scrape(port), "chronotick_status", status="synchronized") == 1
    finally:
        d.config.write_text(original)
        with Client(d.socket) as c:
            c.call("reload")
