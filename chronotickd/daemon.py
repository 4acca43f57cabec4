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
from typing import Any, Protocol

from chronotick_client.protocol import PROTOCOL_VERSION
from chronotickd import __version__, service, shm, statefile
from chronotickd.config import DEFAULT_CONFIG_PATH, Config, ConfigError
from chronotickd.core.engine import Engine, EngineConfig
from chronotickd.core.estimator import FitConfig
from chronotickd.core.measurement import Measurement
from chronotickd.forecast import worker as forecast_worker
from chronotickd.handlers import AdminFailed, Handlers
from chronotickd.publish import Publisher
from chronotickd.server import ServerLimits, SocketServer, bind_unix_socket
from chronotickd.sources.ntp import NtpSettings, NtpSource
from chronotickd.sources.ptp import PtpSettings, PtpSource
from chronotickd.sources.system_clock import kernel_maxerror

log = logging.getLogger("chronotickd")

PUBLISH_INTERVAL_S = 1.0
PERSIST_INTERVAL_S = 60.0
E_CONFIG = "config_error"  # admin `reload` found the config file invalid; nothing was changed
# keys `reload` cannot apply to a running daemon (the old value stays in force)
RESTART_KEYS = ("socket", "socket_mode", "state_dir")
RESTART_PREFIXES = ("clock.", "shm.")
STEP_DETECT_S = 0.001  # CLOCK_REALTIME − CLOCK_MONOTONIC moving more than this is a step


def realtime_minus_monotonic() -> float:
    """Both clocks are slewed alike, so their difference changes only when the system clock
    is stepped. The smallest of three reads keeps a preemption between the calls out."""
    best = None
    for _ in range(3):
        a = time.monotonic()
        d = time.time() - a
        width = time.monotonic() - a
        if best is None or width < best[0]:
            best = (width, d)
    assert best is not None
    return best[1]


class Source(Protocol):
    """What the daemon needs from a time source (NTP, PTP, ...)."""

    kind: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> list[dict[str, Any]]: ...
    def warmup_progress(self) -> float: ...


def engine_config(cfg: Config) -> EngineConfig:
    return EngineConfig(
        fit=FitConfig(),
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
    )


def resolve_group(name: str) -> int | None:
    """gid of ``admin_group`` ('' → None: root only); a missing group is logged, not fatal."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
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
        self.engine = Engine(engine_config(cfg))
        self.measurements: queue.Queue[Measurement] = queue.Queue()
        self._restore()
        self.publisher = Publisher(self.engine.snapshot(time.time(), kernel_maxerror()[0]))
        self.handlers = Handlers(self.publisher)
        self.server = SocketServer(self.handlers, server_limits(cfg))
        self.handlers.admin_gid = resolve_group(cfg["admin_group"])
        self.handlers.admin_ops.update(reload=self.admin_reload, poll_now=self.admin_poll_now,
                                       reset=self.admin_reset)
        self._engine_calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self._ntp_restart_lock = threading.Lock()
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
        # optional Chronos-Bolt forecaster (model.*): its own thread, never on the query path
        self.forecast = forecast_worker.from_config(cfg, lambda: self.publisher.current.clock)
        # shared-memory segments (shm.*): rewritten on every publish, readers never ask us
        self.shm = shm.from_config(cfg)
        if self.shm is not None:
            self.publisher.hooks.append(self.shm.publish)

    # -- state --------------------------------------------------------------------------
    def _restore(self) -> None:
        saved = statefile.load(self.cfg["state_dir"])
        if saved is not None:
            self.engine.restore_state(saved)
            log.info("restored drift estimate from %s (freq %.3f ppm); serving as freerunning "
                     "until fresh samples confirm it", self.cfg["state_dir"], saved["freq"] * 1e6)

    def persist(self) -> None:
        data = self.engine.export_state(time.time())
        if data is None:
            return
        try:
            statefile.save(self.cfg["state_dir"], data)
        except OSError as exc:
            log.warning("cannot save state in %s (%s); check state_dir permissions",
                        self.cfg["state_dir"], exc.strerror)

    # -- sources -------------------------------------------------------------------------
    def submit(self, m: Measurement) -> None:
        """Thread-safe entry for sources."""
        self.measurements.put(m)

    def build_sources(self) -> None:
        ntp = self.ntp_source(self.cfg)
        if ntp is not None:
            self.sources.append(ntp)
        if self.cfg["ptp.enabled"]:
            self.sources.append(PtpSource(PtpSettings(
                uds=self.cfg["ptp.uds"],
                phc_device=self.cfg["ptp.phc_device"],
                poll_interval_s=self.cfg["ptp.poll_interval_s"],
                pmc_path=self.cfg["ptp.pmc_path"],
                phc_ctl_path=self.cfg["ptp.phc_ctl_path"],
                timeout_s=self.cfg["ptp.timeout_s"],
                unknown_gm_accuracy_s=self.cfg["ptp.unknown_gm_accuracy_s"],
                # pmc's own reply socket; its default /var/run/pmc.PID is read-only under
                # the systemd sandbox, the socket's directory (RuntimeDirectory) is writable
                pmc_local=os.path.join(os.path.dirname(self.cfg["socket"]),
                                       f"pmc.{os.getpid()}"),
            ), self.submit))

    def ntp_source(self, cfg: Config) -> NtpSource | None:
        servers = cfg["ntp.servers"]
        if not servers:
            return None
        settings = NtpSettings(
            servers=list(servers),
            timeout_s=cfg["ntp.timeout_s"],
            warmup_s=cfg["ntp.warmup_s"],
            warmup_interval_s=cfg["ntp.warmup_interval_s"],
            interval_s=cfg["ntp.interval_s"],
            max_delay_s=cfg["ntp.max_delay_s"],
            max_root_distance_s=cfg["ntp.max_root_distance_s"],
        )
        return NtpSource(settings, self.submit)

    # -- admin ops (handlers check SO_PEERCRED first; see docs/robustness.md) ---------------
    def admin_reload(self, req: dict[str, Any]) -> dict[str, Any]:
        """Re-read the config file; apply what can change live, report what needs a restart."""
        if not self.cfg.path:
            raise AdminFailed(E_CONFIG, "this daemon was started without a config file")
        try:
            new = Config.load(self.cfg.path)
        except ConfigError as exc:
            raise AdminFailed(E_CONFIG, f"{exc}; the running config is unchanged") from None
        old = self.cfg
        changed = sorted(k for k, v in new.as_dict().items() if old[k] != v)
        restart = [k for k in changed
                   if k in RESTART_KEYS or k.startswith(RESTART_PREFIXES)]
        keep = {k.replace(".", "__"): old[k] for k in {*restart, *RESTART_KEYS}}
        self.cfg = new.override(**keep)
        applied = [k for k in changed if k not in restart]
        if "log_level" in applied:
            logging.getLogger().setLevel(self.cfg["log_level"].upper())
        if "admin_group" in applied:
            self.handlers.admin_gid = resolve_group(self.cfg["admin_group"])
        if any(k.startswith("server.") for k in applied):
            self.server.limits = server_limits(self.cfg)
        if any(k.startswith("ntp.") for k in applied):
            threading.Thread(target=self._restart_ntp, name="ntp-restart", daemon=True).start()
        log.info("config %s reloaded: applied %s%s", self.cfg.path, ", ".join(applied) or
                 "nothing (unchanged)",
                 f"; needs a restart: {', '.join(restart)}" if restart else "")
        return {"config": self.cfg.path, "applied": applied, "restart_required": restart}

    def _restart_ntp(self) -> None:
        """Swap the NTP source for one built from the reloaded settings (off the event loop)."""
        with self._ntp_restart_lock:  # two quick reloads must not interleave
            for source in [s for s in self.sources if s.kind == "ntp"]:
                source.stop()
            new = self.ntp_source(self.cfg)
            self.sources = [s for s in self.sources if s.kind != "ntp"] + ([new] if new else [])
            if new is not None:
                new.start()

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
        self.engine = Engine(engine_config(self.cfg))
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
            "connections": self.server.active,
            "requests": self.server.served,
            "models": self.forecast.describe() if self.forecast is not None else {},
        }

    def publish_now(self) -> None:
        now = time.time()
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
        rows = tuple(row for s in self.sources for row in s.describe())
        facts = self.status_facts()
        self.publisher.publish(clock=clock, status=facts, sources=rows)
        ans = clock.query(now)
        line = f"{ans.status} via {ans.source}"
        if line != self._last_status_line:
            log.info("status %s (bound %.3f ms)", line, ans.bound * 1e3)
            self._last_status_line = line
        for hook in self.on_tick:
            hook({**facts, "status": str(ans.status), "source": ans.source,
                  "bound_s": ans.bound})

    def _check_clock_step(self) -> bool:
        """Re-express the estimates when the system clock was stepped (engine thread)."""
        d = realtime_minus_monotonic()
        prev, self._rt_minus_mono = getattr(self, "_rt_minus_mono", d), d
        if abs(d - prev) <= STEP_DETECT_S:
            return False
        self.engine.clock_stepped(d - prev)
        log.warning("system clock stepped by %+.6f s (realtime vs monotonic); estimates moved "
                    "onto the new time scale", d - prev)
        return True

    def _engine_loop(self) -> None:
        next_publish = 0.0
        while not self._stop.is_set():
            try:
                m = self.measurements.get(timeout=PUBLISH_INTERVAL_S)
            except queue.Empty:
                m = None
            changed = self._check_clock_step()
            while not self._engine_calls.empty():
                self._engine_calls.get_nowait()()
                changed = True
            while m is not None:
                verdict = self.engine.add(m)
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
        sock = self.listen_sock or bind_unix_socket(self.cfg["socket"],
                                                    int(self.cfg["socket_mode"], 8))
        self.publish_now()  # `status` is complete from the first request on
        await self.server.start(sock)
        engine_thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        engine_thread.start()
        if self.forecast is not None:
            self.forecast.start()
        for source in self.sources:
            source.start()
        log.info("chronotickd %s listening on %s (protocol v%d); sources: %s",
                 __version__, self.cfg["socket"], PROTOCOL_VERSION,
                 ", ".join(s.kind for s in self.sources) or "none (system clock only)")
        for hook in self.on_ready:
            hook()
        await self._stop_async.wait()
        log.info("shutting down")
        for hook in self.on_stopping:
            hook()
        await self.server.close()
        for source in self.sources:
            source.stop()
        engine_thread.join(timeout=3)
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
