"""Running as a system service: sd_notify, watchdog, socket activation, journald logging.

``attach(daemon)`` hooks a ``Daemon`` up to the service manager through the daemon's own
hooks (``on_ready``, ``on_tick``, ``on_stopping``); everything is a no-op when the daemon
was not started by systemd, so ``chronotickd`` in a terminal behaves as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chronotickd.service.activation import inherited_socket, refuse_pending, socket_path
from chronotickd.service.logs import setup_logging, under_systemd
from chronotickd.service.notify import Notifier
from chronotickd.service.status import StatusReporter, status_line
from chronotickd.service.watchdog import Watchdog, watchdog_interval

if TYPE_CHECKING:
    from chronotickd.daemon import Daemon

__all__ = [
    "Notifier", "ServiceHooks", "StatusReporter", "Watchdog", "attach", "inherited_socket",
    "notify_failure", "refuse_activation", "setup_logging", "socket_path", "status_line",
    "under_systemd", "watchdog_interval",
]

log = logging.getLogger("chronotickd.service")


@dataclass
class ServiceHooks:
    """What ``attach`` installed, for tests and the status op."""

    notifier: Notifier
    status: StatusReporter
    watchdog: Watchdog | None


def attach(daemon: Daemon, env: Mapping[str, str] | None = None) -> ServiceHooks:
    """Install READY/STATUS/WATCHDOG/STOPPING notifications on ``daemon``'s hooks."""
    env = os.environ if env is None else env
    notifier = Notifier(env)
    reporter = StatusReporter(notifier)
    interval = watchdog_interval(env) if notifier.enabled else None
    watchdog = Watchdog(notifier, interval) if interval else None
    log.debug("service manager: notify %s (%s), watchdog %s", notifier.backend,
              notifier.socket_name or "no NOTIFY_SOCKET",
              f"every {interval:.2f} s" if interval else "off")

    def ready() -> None:
        # Config loaded, socket listening, sources started: clients may connect now, while
        # warm-up goes on (its progress follows in STATUS= lines).
        startup = process_age() or time.monotonic() - daemon.started_monotonic
        notifier.notify("READY=1", f"STATUS=listening on {daemon.cfg['socket']}, warming up",
                        f"MAINPID={os.getpid()}")
        reporter.last = ""  # the next tick states the clock status again
        log.info("ready after %.3f s (notify: %s, watchdog: %s)", startup, notifier.backend,
                 f"every {interval:.1f} s" if interval else "off",
                 extra={"CHRONOTICK_SOCKET": daemon.cfg["socket"],
                        "CHRONOTICK_STARTUP_S": f"{startup:.3f}"})
        if watchdog is not None:
            watchdog.start()  # first ping at once, then every interval

    def stopping() -> None:
        if watchdog is not None:
            watchdog.stop()
        notifier.notify("STOPPING=1", "STATUS=shutting down")

    daemon.on_ready.append(ready)
    daemon.on_tick.append(reporter)
    if watchdog is not None:
        daemon.on_tick.append(watchdog.tick)
        watchdog.checks.append(daemon.supervisor.healthy)
    daemon.on_stopping.append(stopping)
    # `systemctl reload` (ExecReload=kill -HUP): state "reloading" until the restarts are done
    daemon.reloader.on_reloading.append(lambda: notifier.notify("RELOADING=1"))
    daemon.reloader.on_reloaded.append(
        lambda: notifier.notify("READY=1", "STATUS=config reloaded"))
    return ServiceHooks(notifier, reporter, watchdog)


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the "ready after" log line."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def notify_failure(message: str, errno: int | None = None) -> None:
    """Tell systemd why start-up failed (shown by ``systemctl status``)."""
    fields = [f"STATUS=failed: {message}"]
    if errno:
        fields.append(f"ERRNO={errno}")
    Notifier().notify(*fields)


def refuse_activation(message: str) -> None:
    """On a fatal start error under socket activation: answer the waiting clients with
    ``config_error`` so the queued connection does not re-trigger the service (issue 17)."""
    sock = inherited_socket()
    if sock is not None:
        n = refuse_pending(sock, "config_error", message)
        sock.detach()  # systemd keeps listening on it
        log.info("answered %d waiting client(s) with the start error", n)
