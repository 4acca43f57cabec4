"""chronotickd: wires sources → engine → publisher → socket server, and runs them.

Threads: each source polls in its own thread and hands measurements to a queue; the engine
thread owns the ``Engine`` (the only writer), refits, publishes a new immutable state at least
once a second and persists the drift estimate; the asyncio loop in the main thread only
serves requests from the published state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import grp
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from chronotick_client.protocol import PROTOCOL_VERSION
from chronotickd import __version__, metrics, service, shm, statefile
from chronotickd.config import DEFAULT_CONFIG_PATH, Config, ConfigError
from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.measurement import Measurement
from chronotickd.forecast import worker as forecast_worker
from chronotickd.handlers import Handlers
from chronotickd.publish import Publisher
from chronotickd.reload import Reloader
from chronotickd.server import ServerLimits, SocketServer, bind_unix_socket
from chronotickd.service.userns import gid_mapped
from chronotickd.sources import clocks, nts
from chronotickd.sources.ntp import NtpSettings, NtpSource
from chronotickd.sources.ntp_pool import parse_entries
from chronotickd.sources.ptp import PtpSettings, PtpSource
from chronotickd.sources.ptp_quality import GmPolicy
from chronotickd.sources.system_clock import kernel_maxerror
from chronotickd.supervise import Supervisor

log = logging.getLogger("chronotickd")

PUBLISH_INTERVAL_S = 1.0
PERSIST_INTERVAL_S = 60.0
class Source(Protocol):
    """What the daemon needs from a time source (NTP, PTP, ...)."""

    kind: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> list[dict[str, Any]]: ...
    def warmup_progress(self) -> float: ...


def engine_config(cfg: Config) -> EngineConfig:
    """The engine the config asks for: by default the one replay and docs/accuracy.md score;
    ``clock.experts: false`` is the engine as it was before issue 13."""
    base = EngineConfig() if cfg["clock.experts"] else EngineConfig.v1()
    return replace(
        base,
        max_samples=cfg["clock.max_samples"],
        min_samples=cfg["clock.min_samples"],
        confidence_k=cfg["clock.confidence_k"],
        max_drift_ppm=cfg["clock.max_drift_ppm"],
        restore_drift_ppm=cfg["clock.restore_drift_ppm"],
        stale_after_s=cfg["clock.stale_after_s"],
        void_after_s=cfg["clock.void_after_s"],
    )


def server_limits(cfg: Config) -> ServerLimits:
    return ServerLimits(
        max_frame_bytes=cfg["server.max_frame_bytes"],
        max_connections=cfg["server.max_connections"],
        idle_timeout_s=cfg["server.idle_timeout_s"],
        frame_timeout_s=cfg["server.frame_timeout_s"],
        write_timeout_s=cfg["server.write_timeout_s"],
        uid_connection_share=cfg["server.uid_connection_share"],
        max_pipelined=cfg["server.max_pipelined"],
        heavy_queue=cfg["server.heavy_queue"],
    )


def resolve_group(name: str) -> int | None:
    """gid of ``admin_group`` ('' → None: root only); a missing group is logged, not fatal."""
    if not name:
        return None
    try:
        gid = grp.getgrnam(name).gr_gid
        if not gid_mapped(gid):
            log.warning("admin_group %r (gid %d) is not mapped into this service's user "
                        "namespace (PrivateUsers=yes), so its members look like gid 65534 and "
                        "are refused; use the service's own group (admin_group: chronotick) or "
                        "a drop-in with PrivateUsers=no", name, gid)
        return gid
    except KeyError:
        if name.isdigit():
            return int(name)
        log.warning("admin_group %r does not exist; admin requests are root-only until it is "
                    "created and the config reloaded", name)
        return None


class Daemon:
    """One running chronotickd. ``run()`` blocks until ``stop()`` or a signal."""

    def __init__(self, cfg: Config, listen_sock: socket.socket | None = None) -> None:
        self.cfg = cfg
        self.started_monotonic = time.monotonic()
        # the time base's constant: θ = reference − (raw + epoch), see core/timebase.py
        self.epoch = clocks.start_epoch()
        self.engine = Engine(engine_config(cfg), epoch=self.epoch)
        self.measurements: queue.Queue[Measurement] = queue.Queue()
        self._restore()
        self.publisher = Publisher(self.engine.snapshot(clocks.read(), kernel_maxerror()[0]))
        self.handlers = Handlers(self.publisher)
        self.server = SocketServer(self.handlers, server_limits(cfg))
        self.handlers.admin_gid = resolve_group(cfg["admin_group"])
        self.reloader = Reloader(self)  # admin `reload`, SIGHUP (systemctl reload)
        self.handlers.admin_ops.update(reload=lambda _req: self.reloader.reload(),
                                       poll_now=self.admin_poll_now, reset=self.admin_reset)
        self._engine_calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self.supervisor = Supervisor()  # engine + work pool threads: restarted if they die
        self.listen_sock = listen_sock
        self.sources: list[Source] = []
        self.on_ready: list[Callable[[], None]] = []  # e.g. sd_notify READY=1
        self.on_tick: list[Callable[[dict[str, Any]], None]] = []  # e.g. watchdog, STATUS=
        self.on_stopping: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_async: asyncio.Event | None = None
        self._last_persist = 0.0
        self._last_status_line = ""
        self._last_disagreement = ""
        # optional Chronos-Bolt forecaster (model.*): its own thread, never on the query path
        self.forecast = forecast_worker.from_config(cfg, lambda: self.publisher.current.clock)
        # shared-memory segments (shm.*): rewritten on every publish, readers never ask us
        self.shm = shm.from_config(cfg)
        if self.shm is not None:
            self.publisher.hooks.append(self.shm.publish)

    # -- state --------------------------------------------------------------------------
    def _restore(self) -> None:
        saved = statefile.load(self.cfg["state_dir"])
        if saved is None:
            return
        now = clocks.read()
        if statefile.same_boot(saved, now.raw):
            self.engine.restore_state(saved, same_boot=True)
            log.info("restored the estimate from %s (same boot, freq %.3f ppm); serving as "
                     "freerunning, its bound growing since it was saved, until fresh samples "
                     "confirm it", self.cfg["state_dir"], saved["freq"] * 1e6)
        else:
            self.engine.restore_state(saved, same_boot=False)
            log.info("state in %s is from an earlier boot: restored the frequency (%.3f ppm) "
                     "only; unsynchronized until the offset is measured again",
                     self.cfg["state_dir"], saved["freq"] * 1e6)

    def persist(self) -> None:
        now = clocks.read()
        data = self.engine.export_state(now)
        if data is None:
            return
        try:
            statefile.save(self.cfg["state_dir"], statefile.record(data, now.raw, now.real))
        except OSError as exc:
            log.warning("cannot save state in %s (%s); check state_dir permissions",
                        self.cfg["state_dir"], exc.strerror)

    # -- sources -------------------------------------------------------------------------
    def submit(self, m: Measurement) -> None:
        """Thread-safe entry for sources."""
        self.measurements.put(m)

    def build_sources(self) -> None:
        self.sources = [s for s in (self.ntp_source(self.cfg), self.ptp_source(self.cfg)) if s]

    def ptp_source(self, cfg: Config) -> PtpSource | None:
        if not cfg["ptp.enabled"]:
            return None
        return PtpSource(PtpSettings(
            uds=cfg["ptp.uds"],
            phc_device=cfg["ptp.phc_device"],
            poll_interval_s=cfg["ptp.poll_interval_s"],
            pmc_path=cfg["ptp.pmc_path"],
            phc_ctl_path=cfg["ptp.phc_ctl_path"],
            timeout_s=cfg["ptp.timeout_s"],
            gm_policy=GmPolicy(
                unknown_accuracy_s=cfg["ptp.unknown_gm_accuracy_s"],
                holdover_accuracy_s=cfg["ptp.holdover_gm_accuracy_s"],
                untraceable_accuracy_s=cfg["ptp.untraceable_gm_accuracy_s"]),
            # pmc's own reply socket; its default /var/run/pmc.PID is read-only under
            # the systemd sandbox, the socket's directory (RuntimeDirectory) is writable
            pmc_local=os.path.join(os.path.dirname(cfg["socket"]), f"pmc.{os.getpid()}"),
        ), self.submit, epoch=self.epoch)

    def ntp_source(self, cfg: Config) -> NtpSource | None:
        specs = parse_entries(cfg["ntp.servers"])
        if not specs:
            return None
        if any(s.nts for s in specs) and (missing := nts.available()) is not None:
            log.error("ntp.servers asks for nts: true but %s; those servers are not used",
                      missing)
            specs = [s for s in specs if not s.nts]
        settings = NtpSettings(
            servers=specs,
            timeout_s=cfg["ntp.timeout_s"],
            minpoll_s=cfg["ntp.minpoll_s"],
            maxpoll_s=cfg["ntp.maxpoll_s"],
            burst=cfg["ntp.burst"],
            burst_interval_s=cfg["ntp.burst_interval_s"],
            max_delay_s=cfg["ntp.max_delay_s"],
            max_root_distance_s=cfg["ntp.max_root_distance_s"],
            resolve_interval_s=cfg["ntp.resolve_interval_s"],
            poll_budget_s=cfg["ntp.poll_budget_s"],
        )
        # TIME BASE: t1/t4 from CLOCK_MONOTONIC_RAW against the engine's epoch. An engine
        # without an epoch still models against CLOCK_REALTIME: read that, epoch 0.
        epoch = getattr(self.engine, "epoch", None)
        if epoch is None:
            source = NtpSource(settings, self.submit, read_raw_ns=time.time_ns, epoch=0)
        else:
            source = NtpSource(settings, self.submit, epoch=int(epoch))
        source.judged = True  # the engine loop passes its verdicts back (_judge)
        return source

    # -- live changes (chronotickd/reload.py decides what a reload may apply) ---------------
    def apply_admin_group(self) -> None:
        self.handlers.admin_gid = resolve_group(self.cfg["admin_group"])

    def apply_server_limits(self) -> None:
        self.server.limits = server_limits(self.cfg)

    def restart_source(self, kind: str) -> None:
        """Swap the ``kind`` source for one built from the current settings (not on the loop)."""
        for source in [s for s in self.sources if s.kind == kind]:
            source.stop()
        new = self.ntp_source(self.cfg) if kind == "ntp" else self.ptp_source(self.cfg)
        self.sources = [s for s in self.sources if s.kind != kind] + ([new] if new else [])
        if new is not None:
            new.start()

    def restart_forecast(self) -> None:
        old, self.forecast = self.forecast, None
        if old is not None:
            old.stop()
        new = forecast_worker.from_config(self.cfg, lambda: self.publisher.current.clock)
        if new is not None:
            new.start()
        self.forecast = new

    # -- admin ops (handlers check SO_PEERCRED first; see docs/robustness.md) ---------------
    def admin_poll_now(self, req: dict[str, Any]) -> dict[str, Any]:
        polled = []
        for source in self.sources:
            fn = getattr(source, "poll_now", None)
            if fn is not None:
                fn()
                polled.append(source.kind)
        return {"polled": polled}

    def admin_reset(self, req: dict[str, Any]) -> dict[str, Any]:
        """Forget every estimate (memory and state file); the engine thread carries it out."""
        self._engine_calls.put(self._reset_engine)
        return {"reset": "scheduled", "note": "status is unsynchronized until fresh samples"}

    def _reset_engine(self) -> None:
        self.engine = Engine(engine_config(self.cfg), epoch=self.epoch)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.cfg["state_dir"], statefile.STATE_FILE))
        log.warning("state reset by an admin request: estimates and %s dropped",
                    statefile.STATE_FILE)

    # -- engine thread ---------------------------------------------------------------------
    def status_facts(self) -> dict[str, Any]:
        progress = min((s.warmup_progress() for s in self.sources), default=1.0)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "warmup_progress": round(progress, 3),
            "socket": self.cfg["socket"],
            "config": self.cfg.path,
            "measurements": sum(len(t.history) for t in self.engine.tracks.values()),
            "steps": sum(t.steps for t in self.engine.tracks.values()),
            "outliers": sum(t.outliers for t in self.engine.tracks.values()),
            **self.realtime_facts(),
            "connections": self.server.active,
            "requests": self.server.served,
            "limits": self.server.counters(),
            "threads": self.supervisor.describe(),
            "models": self.forecast.describe() if self.forecast is not None else {},
        }

    def realtime_facts(self) -> dict[str, Any]:
        """What ``status`` says about CLOCK_REALTIME as seen against MONOTONIC_RAW, and leaps."""
        eng = self.engine
        last = eng.last_step
        return {
            "epoch_s": int(eng.epoch),
            "realtime_steps": eng.realtime_steps,
            "realtime_last_step_ns": round(last[0] * 1e9) if last else None,
            "realtime_last_step_at_ns": round(last[1] * 1e9) if last else None,
            "realtime_rate_ppm": round(eng.realtime.rate() * 1e6, 3),
            "leap": eng.leap_status(clocks.raw_now()),
        }

    def publish_now(self) -> None:
        now = clocks.read()
        # sources with their own liveness signal (PTP: port state, Sync age) steer selection
        for source in self.sources:
            for name, reason in getattr(source, "health", dict)().items():
                if reason is None:
                    self.engine.mark_usable(name)
                else:
                    self.engine.mark_unusable(name, reason)
        clock = self.engine.snapshot(now, kernel_maxerror()[0])
        if self.forecast is not None:
            clock = self.forecast.wrap(clock)  # latest forecasts; queries stay arithmetic
        rows = clocks.rows_on_system_time(
            tuple(row for s in self.sources for row in s.describe()), now, self.epoch)
        facts = self.status_facts()
        self.publisher.publish(clock=clock, status=facts, sources=rows)
        if clock.disagreement != self._last_disagreement:
            if clock.disagreement:
                log.warning("%s", clock.disagreement)
            else:
                log.info("sources agree again")
            self._last_disagreement = clock.disagreement
        ans = clock.query(now)
        line = f"{ans.status} via {ans.source}"
        if line != self._last_status_line:
            log.info("status %s (bound %.3f ms)", line, ans.bound * 1e3)
            self._last_status_line = line
        for hook in self.on_tick:
            hook({**facts, "status": str(ans.status), "source": ans.source,
                  "bound_s": ans.bound})

    def _observe_clock(self) -> bool:
        """Sample δ = REALTIME − RAW − epoch (engine thread: every tick and measurement);
        a change the recent rate does not explain is logged once per step or slew."""
        reading = clocks.read()
        step = self.engine.observe_clock(reading)
        if step is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(reading.real))
            log.warning("CLOCK_REALTIME stepped or slewed by %+.6f s at %s UTC (seen against "
                        "CLOCK_MONOTONIC_RAW; the estimate is unaffected, answers follow the new "
                        "system time)", step, when)
        return step is not None

    def _judge(self, m: Measurement, verdict: str) -> None:
        """The engine's verdict on an NTP sample goes back to that source's poll policy."""
        if m.kind != "ntp":
            return
        residual, bound = self.engine.poll_feedback(m.source)
        for source in self.sources:
            if isinstance(source, NtpSource):
                source.judge(m.source, verdict, residual, bound)

    def _engine_loop(self) -> None:
        next_publish = 0.0
        while not self._stop.is_set():
            try:
                m = self.measurements.get(timeout=PUBLISH_INTERVAL_S)
            except queue.Empty:
                m = None
            changed = self._observe_clock()  # publish the map with the step at once
            while not self._engine_calls.empty():
                self._engine_calls.get_nowait()()
                changed = True
            while m is not None:
                self._observe_clock()
                verdict = self.engine.add(m)
                self._judge(m, verdict)
                if verdict == "step":
                    log.warning("clock step detected on %s: offset now %.6f s; fit restarted",
                                m.source, m.offset)
                changed = True
                try:
                    m = self.measurements.get_nowait()
                except queue.Empty:
                    m = None
            mono = time.monotonic()
            if changed or mono >= next_publish:
                try:
                    self.publish_now()
                except Exception:
                    log.exception("publishing state failed; keeping the previous state")
                next_publish = mono + PUBLISH_INTERVAL_S
            if mono - self._last_persist >= PERSIST_INTERVAL_S:
                self._last_persist = mono
                self.persist()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None and self._stop_async is not None:
            self._loop.call_soon_threadsafe(self._stop_async.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_async = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop)
        self._loop.add_signal_handler(signal.SIGHUP, self.reloader.on_sighup)
        # Prometheus endpoint (metrics.listen): its own thread, reads only published state
        listen = self.cfg["metrics.listen"]
        scrape = metrics.start(self, listen) if listen else None
        sock = self.listen_sock or bind_unix_socket(self.cfg["socket"],
                                                    int(self.cfg["socket_mode"], 8))
        self.publish_now()  # `status` is complete from the first request on
        await self.server.start(sock, spawn=self.supervisor.spawn)
        self.supervisor.spawn("engine", self._engine_loop)
        if self.forecast is not None:
            self.forecast.start()
        for source in self.sources:
            source.start()
        log.info("chronotickd %s listening on %s (protocol v%d); sources: %s",
                 __version__, self.cfg["socket"], PROTOCOL_VERSION,
                 ", ".join(s.kind for s in self.sources) or "none (system clock only)")
        for hook in self.on_ready:
            hook()
        # Everything made at start-up (modules, config, numpy, the engine) lives as long as the
        # daemon: move it out of the cyclic collector's reach. Otherwise each full collection
        # walks it all (~10 ms here), on the event loop's thread, and a client's burst of
        # allocations (a flood of requests or connections) triggers such collections often
        # enough to put that stall into another client's p99 (benchmarks/bench_abuse.py).
        gc.collect()
        gc.freeze()
        await self._stop_async.wait()
        log.info("shutting down")
        for hook in self.on_stopping:
            hook()
        await self.server.close()
        if scrape is not None:
            scrape.stop()
        for source in self.sources:
            source.stop()
        self.supervisor.stop()
        self.supervisor.join("engine", timeout=3)
        if self.forecast is not None:
            self.forecast.stop()
        self.persist()
        if self.shm is not None:
            self.shm.close()
        if self.listen_sock is None:
            with contextlib.suppress(OSError):
                os.unlink(self.cfg["socket"])

    def run(self) -> None:
        asyncio.run(self._main())


# -- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chronotickd", description="ChronoTick time daemon")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="YAML config file")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config, print the effective settings and exit")
    p.add_argument("--socket", help="override the config's socket path")
    p.add_argument("--state-dir", help="override the config's state_dir")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--version", action="version", version=f"chronotickd {__version__}")
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> Config:
    cfg = Config.load(args.config)
    return cfg.override(socket=args.socket, state_dir=args.state_dir, log_level=args.log_level)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        print(f"chronotickd: config error: {exc}", file=sys.stderr)
        service.notify_failure(f"config error: {exc}")
        service.refuse_activation(f"chronotickd cannot start: config error: {exc}; fix "
                                  f"{args.config} (chronotickd --check-config) and restart it")
        return 2
    if args.check_config:
        for key, value in cfg.as_dict().items():
            print(f"{key}: {value!r}")
        print(f"chronotickd: {args.config} is valid", file=sys.stderr)
        return 0
    service.setup_logging(cfg["log_level"])  # journald under systemd, stderr otherwise
    try:
        listen = service.inherited_socket()  # socket activation (LISTEN_FDS), else our own
        if listen is not None:
            cfg = cfg.override(socket=service.socket_path(listen) or cfg["socket"])
        daemon = Daemon(cfg, listen_sock=listen)
        daemon.build_sources()
        service.attach(daemon)  # sd_notify READY/STATUS/WATCHDOG/STOPPING; no-op otherwise
        daemon.run()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        service.notify_failure(str(exc), exc.errno)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
