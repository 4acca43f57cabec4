"""Prometheus metrics endpoint (optional: ``metrics.listen`` in the config, off by default).

Why it looks like this:
- A scrape reads only what is already published (``Publisher.current``, one reference taken
  once per scrape) and the server's plain integer counters. It never calls the engine, takes
  no lock and never runs on the event loop: prometheus-client's HTTP server answers from its
  own thread, so a slow or stuck scraper cannot delay a ``now`` (docs/metrics.md).
- Values come from the same helpers the socket ops use (``ClockState.query``,
  ``tracking.tracking_result``), so a scrape and ``chronotick-cli now/tracking --json`` agree.
- Names follow the Prometheus conventions (prefix ``chronotick_``, base units, ``_seconds``,
  ``_ratio``, counters ``_total``); sources are labels. The list is docs/metrics.md.
- prometheus-client is an extra (``chronotick[metrics]``): imported only when metrics are on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from chronotickd.core.measurement import Status
from chronotickd.core.state import TimeAnswer
from chronotickd.sources import clocks
from chronotickd.tracking import LEAP_STATES, selected_row, tracking_result

log = logging.getLogger("chronotickd.metrics")

INSTALL_HINT = ("install the metrics extra (`pip install 'chronotick[metrics]'`, i.e. "
                "prometheus-client) or set metrics.listen to \"\" to turn metrics off")
# server-side failures that never reach a handler, by the error code clients see
SERVER_ERRORS = (("busy", "rejected"), ("bad_frame", "bad_frames"), ("timeout", "timeouts"))


class MetricsUnavailable(OSError):
    """``metrics.listen`` is set but the endpoint cannot be served (missing extra, bind)."""


class _DaemonView(Protocol):
    publisher: Any
    handlers: Any
    server: Any


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9123"`` / ``"[::1]:9123"`` → (host, port); config.py validated it."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _reach_ratio(row: dict[str, Any]) -> float:
    """Share of the last 8 polls that got a usable reply (chrony's reach register); sources
    without one (PTP) count 1 while their state is ok."""
    reach = row.get("reach")
    if isinstance(reach, int):
        return bin(reach & 0xFF).count("1") / 8.0
    return 1.0 if row.get("state") == "ok" else 0.0


def _s(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _ppm(value: Any) -> float:
    return _s(value) / 1e6


def _ns(value: Any) -> float:
    return _s(value) / 1e9


class ChronoTickCollector:
    """Builds every ``chronotick_`` family from one published snapshot per scrape."""

    def __init__(self, daemon: _DaemonView,
                 read_clocks: Callable[[], tuple[int, int, int]] = clocks.read_ns) -> None:
        self.daemon = daemon
        self.read_clocks = read_clocks  # both clocks, as a query reads them (time base)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        d = self.daemon
        pub = d.publisher.current  # one atomic read; everything below is arithmetic on it
        raw_ns, ns, width_ns = self.read_clocks()
        # the same integer-nanosecond path as `now`, so a scrape and `now` agree exactly
        ans = TimeAnswer(ns * 1e-9, *pub.clock.answer_ns(raw_ns, ns, width_ns))
        tr = tracking_result(pub, ns, ans)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"chronotick_{name}", doc, value=value)

        yield gauge("offset_seconds", "Served offset, reference − system clock (s); corrected "
                    "time = system time + offset", ans.offset)
        yield gauge("bound_seconds", "Half-width of the served bound (s): true time lies in "
                    "corrected ± bound", min(ans.bound, 2**62 / 1e9))
        yield gauge("frequency_ratio", "Fitted frequency, d(offset)/dt (positive: the modelled "
                    "clock runs slow); ×1e6 for ppm", _ppm(tr["frequency_ppm"]))
        yield gauge("frequency_error_ratio", "Standard error of the fitted frequency (chrony's "
                    "skew)", _ppm(tr["frequency_error_ppm"]))
        yield gauge("residual_seconds", "Robust scale of the fit's residuals (s)",
                    _ns(tr["residual_ns"]))
        yield gauge("last_sample_age_seconds", "Age of the newest measurement behind the "
                    "served answer (s); +Inf when never measured", ans.age)
        yield gauge("poll_interval_seconds", "Poll interval of the selected source (s)",
                    _s(tr["poll_interval_s"]))
        yield gauge("root_distance_seconds", "Root delay / 2 + root dispersion of the selected "
                    "server (s)", _ns(tr["root_delay_ns"]) / 2 + _ns(tr["root_dispersion_ns"]))
        status = GaugeMetricFamily("chronotick_status", "1 for the current status, 0 for the "
                                   "others", labels=["status"])
        for st in Status:
            status.add_metric([str(st)], 1.0 if ans.status == st else 0.0)
        yield status
        leap = GaugeMetricFamily("chronotick_leap", "1 for the known leap-second state "
                                 "(insert/delete: one is pending), 0 for the others",
                                 labels=["state"])
        for state in LEAP_STATES:
            leap.add_metric([state], 1.0 if tr["leap"] == state else 0.0)
        yield leap
        facts = pub.status
        yield CounterMetricFamily("chronotick_clock_steps", "Clock steps the engine saw in the "
                                  "measurements (since start or the last reset)",
                                  value=facts.get("steps", 0))
        yield gauge("measurements", "Measurements the engine holds in its windows",
                    facts.get("measurements", 0))
        yield gauge("warmup_ratio", "Warm-up progress of the sources (1: done)",
                    _s(facts.get("warmup_progress")))
        yield from self._sources(pub, GaugeMetricFamily)
        yield from self._server(CounterMetricFamily, GaugeMetricFamily)
        yield from self._models(facts.get("models") or {}, GaugeMetricFamily)
        info = GaugeMetricFamily("chronotick_build_info", "Version of the running daemon",
                                 labels=["version"])
        info.add_metric([str(facts.get("version", ""))], 1.0)
        yield info

    def _sources(self, pub: Any, gauge_family: Any) -> Iterator[Any]:
        labels = ["source", "kind"]
        fams = {
            "offset": gauge_family("chronotick_source_offset_seconds",
                                   "Last measured offset of the source (s)", labels=labels),
            "delay": gauge_family("chronotick_source_delay_seconds",
                                  "Round-trip delay of the last sample (s)", labels=labels),
            "reach": gauge_family("chronotick_source_reachability_ratio",
                                  "Share of the last 8 polls answered usably", labels=labels),
            "selected": gauge_family("chronotick_source_selected",
                                     "1 for the source the served answer follows",
                                     labels=labels),
            "usable": gauge_family("chronotick_source_usable",
                                   "1 when the engine may select the source", labels=labels),
        }
        tracks = {t.name: t for t in pub.clock.tracks}
        chosen = selected_row(pub)
        for row in pub.sources:
            name = str(row.get("name", ""))
            lv = [name, str(row.get("kind", ""))]
            track = tracks.get(name)
            fams["offset"].add_metric(lv, _s(row.get("last_offset")))
            fams["delay"].add_metric(lv, _s(row.get("last_delay")))
            fams["reach"].add_metric(lv, _reach_ratio(row))
            fams["selected"].add_metric(lv, 1.0 if chosen and chosen.get("name") == name
                                        else 0.0)
            fams["usable"].add_metric(lv, 1.0 if track is not None and track.usable else 0.0)
        yield from fams.values()

    def _server(self, counter_family: Any, gauge_family: Any) -> Iterator[Any]:
        h, srv = self.daemon.handlers, self.daemon.server
        req = counter_family("chronotick_requests", "Requests served, by op", labels=["op"])
        for op, n in list(h.op_counts.items()):
            req.add_metric([op], n)
        yield req
        errs = counter_family("chronotick_errors", "Error replies and dropped connections, "
                              "by error code", labels=["code"])
        counts = dict(h.error_counts)
        for code, attr in SERVER_ERRORS:
            counts[code] = counts.get(code, 0) + getattr(srv, attr, 0)
        for code, n in sorted(counts.items()):
            errs.add_metric([code], n)
        yield errs
        yield gauge_family("chronotick_connections", "Open client connections",
                           value=srv.active)

    def _models(self, models: dict[str, Any], gauge_family: Any) -> Iterator[Any]:
        weight = gauge_family("chronotick_model_weight_ratio", "Weight of each forecaster in "
                              "the fused answer (engine = the classical fit)", labels=["model"])
        infer = gauge_family("chronotick_model_inference_seconds", "Inference time of each "
                             "forecaster (s), by quantile", labels=["model", "quantile"])
        for name, row in models.items():
            if not isinstance(row, dict):
                continue
            if "weight" in row:
                weight.add_metric([name], _s(row["weight"]))
            for q, key in (("0.5", "inference_p50_ms"), ("0.99", "inference_p99_ms")):
                if isinstance(row.get(key), int | float):
                    infer.add_metric([name, q], row[key] / 1e3)
        yield weight
        yield infer


class MetricsServer:
    """The running HTTP endpoint; ``stop()`` closes it."""

    def __init__(self, httpd: Any, thread: Any, address: str) -> None:
        self.httpd, self.thread, self.address = httpd, thread, address

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start(daemon: _DaemonView, listen: str) -> MetricsServer:
    """Serve ``/metrics`` on ``listen`` from a thread of its own; errors name the fix."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    except ImportError:
        raise MetricsUnavailable(f"metrics.listen is {listen!r} but prometheus-client is not "
                                 f"installed; {INSTALL_HINT}") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChronoTickCollector(daemon))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)  # RSS and CPU per daemon (fleet benches scrape them)
    host, port = parse_listen(listen)
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsUnavailable(f"cannot serve metrics on {listen} (metrics.listen): "
                                 f"{exc.strerror or exc}; choose a free address:port or set "
                                 "metrics.listen to \"\"") from None
    log.info("metrics on http://%s/metrics", listen)
    return MetricsServer(httpd, thread, listen)
