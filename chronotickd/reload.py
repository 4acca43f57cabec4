"""Config reload: the admin ``reload`` request, SIGHUP and systemd's ``ExecReload``.

The config file is re-read and validated; an invalid file changes nothing. Every changed key
is then either *applied* — the component that reads it is updated or restarted now — or
reported as *needs a restart* and keeps its old value. A key is never reported applied unless
the running daemon really uses the new value afterwards:

- ``log_level``, ``admin_group``, ``server.*``: updated in place.
- ``ntp.*``, ``ptp.*``: that source is stopped and rebuilt from the new settings (off the event
  loop: stopping a source joins its thread).
- ``model.*``: the forecast worker is stopped and a new one built (or none, when disabled).
- ``socket``, ``socket_mode``, ``state_dir``, ``clock.*``: need a restart (the listening
  socket may be systemd's; the engine's estimates would be lost).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chronotickd.config import Config, ConfigError
from chronotickd.handlers import AdminFailed

if TYPE_CHECKING:
    from chronotickd.daemon import Daemon

log = logging.getLogger("chronotickd")

E_CONFIG = "config_error"  # the config file is invalid; nothing was changed
RESTART_KEYS = ("socket", "socket_mode", "state_dir")
RESTART_PREFIXES = ("clock.", "metrics.", "shm.")
# components restarted (off the event loop) when a key under their prefix changes
RESTARTED_PREFIXES = ("ntp.", "ptp.", "model.")


def needs_restart(key: str) -> bool:
    return key in RESTART_KEYS or key.startswith(RESTART_PREFIXES)


class Reloader:
    """Applies a re-read config to a running ``Daemon``.

    ``reload()`` runs on the event loop and returns at once: keys updated in place are in
    force when it returns; source and forecaster restarts run in a thread (stopping one joins
    its thread), one batch at a time, and ``on_reloaded`` hooks run when they are done.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._restart_lock = threading.Lock()  # two quick reloads must not interleave
        self.on_reloading: list[Callable[[], None]] = []  # e.g. sd_notify RELOADING=1
        self.on_reloaded: list[Callable[[], None]] = []  # e.g. sd_notify READY=1

    def reload(self) -> dict[str, Any]:
        """Re-read and apply; report ``{config, applied, restart_required}``."""
        d = self.daemon
        if not d.cfg.path:
            raise AdminFailed(E_CONFIG, "this daemon was started without a config file")
        try:
            new = Config.load(d.cfg.path)
        except ConfigError as exc:
            raise AdminFailed(E_CONFIG, f"{exc}; the running config is unchanged") from None
        old = d.cfg
        changed = sorted(k for k, v in new.as_dict().items() if old[k] != v)
        restart = [k for k in changed if needs_restart(k)]
        keep = {k.replace(".", "__"): old[k] for k in {*restart, *RESTART_KEYS}}
        d.cfg = new.override(**keep)
        applied = [k for k in changed if k not in restart]
        for hook in self.on_reloading:
            hook()
        if "log_level" in applied:
            logging.getLogger().setLevel(d.cfg["log_level"].upper())
        if "admin_group" in applied:
            d.apply_admin_group()
        if any(k.startswith("server.") for k in applied):
            d.apply_server_limits()
        components = [p.rstrip(".") for p in RESTARTED_PREFIXES
                      if any(k.startswith(p) for k in applied)]
        threading.Thread(target=self._restart, args=(components,), name="reload",
                         daemon=True).start()
        log.info("config %s reloaded: applied %s%s", d.cfg.path,
                 ", ".join(applied) or "nothing (unchanged)",
                 f"; needs a restart: {', '.join(restart)}" if restart else "")
        return {"config": d.cfg.path, "applied": applied, "restart_required": restart}

    def _restart(self, components: list[str]) -> None:
        d = self.daemon
        with self._restart_lock:
            try:
                for kind in components:
                    if kind == "model":
                        d.restart_forecast()
                    else:
                        d.restart_source(kind)
                    log.info("%s restarted with the reloaded settings", kind)
            except Exception:
                log.exception("restarting %s after a reload failed", ", ".join(components))
            finally:
                for hook in self.on_reloaded:
                    hook()

    def on_sighup(self) -> None:
        """SIGHUP (``systemctl reload``: ExecReload=kill -HUP $MAINPID); errors are logged."""
        try:
            self.reload()
        except AdminFailed as exc:
            log.error("reload on SIGHUP failed: %s", exc)
