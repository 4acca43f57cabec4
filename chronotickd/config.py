"""Configuration: one YAML file, validated strictly against ``SCHEMA`` at start.

Every key has a type, a default and a one-line meaning; an unknown key or a bad value raises
``ConfigError`` naming the key and what was expected (the daemon exits with status 2).
Sections other issues add (``ptp``, ``model``, ``service``) extend ``SCHEMA`` in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chronotickd.forecast.defaults import DEFAULT_ON as MODEL_DEFAULT_ON
from chronotickd.sources import ntp_pool

DEFAULT_CONFIG_PATH = "/etc/chronotick/chronotick.yaml"


class ConfigError(ValueError):
    """A config problem, phrased as ``key: what was expected, what was found``."""


@dataclass(frozen=True)
class Key:
    kind: str  # "str" | "int" | "float" | "bool" | "list[str]" | "servers" | "mode" | "choice"
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


def _servers(value: Any) -> str | None:
    try:
        ntp_pool.parse_entries(value)
    except ntp_pool.ServerEntryError as exc:
        return f"{exc}"
    return None


# the shipped default: one pool name, up to 4 of its servers (chrony's `pool ... iburst`)
DEFAULT_SERVERS = [{"host": "2.pool.ntp.org", "pool": True, "maxsources": 4}]


def _listen(value: Any) -> str | None:
    """'' (off) or 'host:port' with an IP literal or host name ('[::1]:9123' for IPv6)."""
    import ipaddress
    import re

    if value == "":
        return None
    host, sep, port = str(value).rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    name = host[1:-1] if bracketed else host
    ok_host = bool(name) and (re.fullmatch(r"[A-Za-z0-9.-]+", name) is not None or bracketed)
    if ok_host and bracketed:
        try:
            ok_host = ipaddress.ip_address(name).version == 6
        except ValueError:
            ok_host = False
    if not sep or not ok_host or not port.isdigit() or not 0 < int(port) < 65536:
        return (f"'{value}' is not '' (off) or 'address:port' with a port in 1..65535, "
                "e.g. '127.0.0.1:9123' or '[::1]:9123'")
    return None


def _cpu_list(value: Any) -> str | None:
    text = str(value).replace(" ", "")
    if text and not all(p.isdigit() for p in text.split(",")):
        return f"'{value}' is not empty or a comma-separated list of CPU numbers such as '1,3'"
    return None


SCHEMA: dict[str, Key] = {
    "socket": Key("str", "/run/chronotick/chronotick.sock", "Unix socket clients connect to"),
    "socket_mode": Key("mode", "0666", "permissions of the socket (octal string)"),
    "admin_group": Key("str", "", "group whose members may run admin requests (root always)"),
    "state_dir": Key("str", "/var/lib/chronotick", "where the drift state is persisted"),
    "log_level": Key("choice", "info", "log verbosity",
                     choices=("debug", "info", "warning", "error")),
    "ntp.servers": Key("servers", DEFAULT_SERVERS,
                       "NTP servers: 'host', 'host:port' or a mapping {host, port, nts, "
                       "nts_port, trusted_ca, pool, maxsources, minpoll_s, maxpoll_s}",
                       check=_servers),
    "ntp.timeout_s": Key("float", 1.0, "per-request timeout", 0.01, 30),
    "ntp.minpoll_s": Key("float", 64.0, "shortest poll interval (public servers: at least "
                         "64 s whatever is set)", 0.1, 86400),
    "ntp.maxpoll_s": Key("float", 1024.0, "longest poll interval", 0.1, 86400),
    "ntp.burst": Key("int", 4, "requests in the initial burst (public servers: at most 4)",
                     1, 8),
    "ntp.burst_interval_s": Key("float", 2.0, "spacing of burst requests (public servers: at "
                                "least 2 s)", 0.05, 60),
    "ntp.poll_budget_s": Key("float", 0.0, "mean seconds between polls of one address: the "
                             "adaptive policy spends polls where they help, no faster on "
                             "average (0: no budget, the interval lengthens while predictions "
                             "hold); never below the address's minpoll", 0, 86400),
    "ntp.resolve_interval_s": Key("float", 3600.0, "how often server and pool names are "
                                  "resolved again", 60, 86400),
    "ntp.max_delay_s": Key("float", 0.5, "samples with a longer round trip are dropped", 0, 16),
    "ntp.max_root_distance_s": Key("float", 3.0, "servers farther from their root are dropped",
                                   0, 16),
    "clock.experts": Key("bool", True, "issue 13's estimator: experts aggregated per track, "
                         "first samples served, 2-sample steps at long polls (docs/accuracy.md)"),
    "clock.min_samples": Key("int", 3, "consistent samples before status is synchronized", 1, 64),
    "clock.max_samples": Key("int", 64, "fit window length in samples", 4, 4096),
    "clock.confidence_k": Key("float", 3.0, "multiplier on the fit's standard error", 1, 10),
    "clock.max_drift_ppm": Key("float", 1.0, "frequency change allowed between samples", 0, 1000),
    "clock.restore_drift_ppm": Key("float", 50.0, "bound growth of a restored estimate",
                                   0, 1000),
    "clock.stale_after_s": Key("float", 64.0, "age before status turns freerunning", 1, 86400),
    "clock.void_after_s": Key("float", 3600.0,
                              "age after which the estimate is no longer vouched for", 1,
                              10 * 86400),
    "ptp.enabled": Key("bool", False, "poll ptp4l through pmc (PTP preferred over NTP)"),
    "ptp.uds": Key("str", "/var/run/ptp4l", "ptp4l's management socket (its uds_address)"),
    "ptp.phc_device": Key("str", "", "PHC ptp4l disciplines/measures, e.g. /dev/ptp0; "
                          "empty: software timestamping (ptp4l's clock is the system clock)"),
    "ptp.poll_interval_s": Key("float", 2.0, "seconds between pmc polls", 0.2, 3600),
    "ptp.pmc_path": Key("str", "pmc", "pmc executable (linuxptp)"),
    "ptp.phc_ctl_path": Key("str", "phc_ctl", "unused: the daemon reads the PHC itself, "
                            "read-only (accepted so older configs load)"),
    "ptp.timeout_s": Key("float", 1.0, "timeout of one pmc run", 0.05, 30),
    "ptp.unknown_gm_accuracy_s": Key("float", 100e-6, "error assumed for a grandmaster whose "
                                     "clockAccuracy is 0xFE (unknown)", 0, 16),
    "ptp.holdover_gm_accuracy_s": Key("float", 1e-3, "added for a traceable grandmaster in "
                                      "holdover or a degraded clockClass", 0, 16),
    "ptp.untraceable_gm_accuracy_s": Key("float", 1.0, "added for a grandmaster whose time is "
                                         "not traceable (timeTraceable false, class 248...)",
                                         0, 16),
    "server.max_frame_bytes": Key("int", 65536, "largest request frame accepted", 64, 1 << 20),
    "server.max_connections": Key("int", 256, "concurrent client connections", 1, 65536),
    "server.idle_timeout_s": Key("float", 60.0, "close connections idle this long", 0.1, 86400),
    "server.frame_timeout_s": Key("float", 5.0, "a begun frame must arrive completely this fast",
                                  0.05, 3600),
    "server.write_timeout_s": Key("float", 5.0, "a client must take its reply this fast",
                                  0.05, 3600),
    "server.uid_connection_share": Key("float", 0.25, "share of max_connections one uid may "
                                       "hold", 0.01, 1),
    "server.max_pipelined": Key("int", 16, "pipelined requests a connection has answered per "
                                "event-loop pass before it waits its turn", 1, 4096),
    "server.heavy_queue": Key("int", 16, "`at` requests queued on the work pool before `busy`",
                              1, 4096),
    "metrics.listen": Key("str", "", "address:port of the Prometheus endpoint (/metrics); "
                          "empty: off", check=_listen),
    "shm.path": Key("str", "/run/chronotick/shm0", "ChronoTick's shared-memory segment "
                    "(corrected time at clock-read cost); empty: off"),
    "shm.clockbound_path": Key("str", "", "also write a ClockBound v2 segment here for "
                               "ClockBound's clients, e.g. /var/run/clockbound/shm0; empty: off"),
    "model.enabled": Key("bool", MODEL_DEFAULT_ON, "fuse Chronos-Bolt forecasts with the engine"),
    "model.source": Key("str", "builtin", "'builtin' (shipped chronotick-bolt-mini), a local "
                        "Chronos-Bolt directory or a Hugging Face id"),
    "model.threads": Key("int", 1, "torch threads of the inference worker", 1, 64),
    "model.cpu_affinity": Key("str", "", "CPUs the inference worker may use, e.g. '1' or "
                              "'2,3'; empty: no pinning", check=_cpu_list),
    "model.short.context": Key("int", 100, "short-term model: measurements of context", 16, 320),
    "model.short.horizon_s": Key("float", 5.0, "short-term model: horizon", 0.1, 86400),
    "model.short.refresh_s": Key("float", 1.0, "short-term model: refresh period", 0.1, 86400),
    "model.long.context": Key("int", 300, "long-term model: measurements of context", 16, 320),
    "model.long.horizon_s": Key("float", 60.0, "long-term model: horizon", 0.1, 86400),
    "model.long.refresh_s": Key("float", 30.0, "long-term model: refresh period", 0.1, 86400),
}


def _validate(name: str, key: Key, value: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{name}: expected {expected}, got {value!r}")

    kind = key.kind
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        if kind == "int" and not isinstance(value, int):
            raise bad("a whole number")
        lo, hi = key.minimum, key.maximum
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise bad(f"a number in [{lo}, {hi}]")
        value = float(value) if kind == "float" else value
    elif kind == "servers":
        if not isinstance(value, list) or not all(isinstance(v, str | dict) for v in value):
            raise bad("a list of 'host', 'host:port' or mappings")
    elif kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
    elif kind == "mode":
        text = str(value)
        try:
            mode = int(text, 8)
        except ValueError:
            raise bad("an octal mode such as '0660'") from None
        if not 0 <= mode <= 0o777:
            raise bad("an octal mode such as '0660'")
        value = text
    elif kind == "choice" and value not in key.choices:
        raise bad("one of " + ", ".join(key.choices))
    if key.check is not None:
        problem = key.check(value)
        if problem:
            sep = "" if problem.startswith("[") else ": "
            raise ConfigError(f"{name}{sep}{problem}")
    return value


def _unknown(name: str, what: str = "key") -> ConfigError:
    """Name the unknown key, the likely intended one and the keys of its section."""
    import difflib

    section = name.rpartition(".")[0]
    if section:
        near = [k for k in SCHEMA if k.rpartition(".")[0] == section]
    else:  # top level: plain keys and section names
        near = list(dict.fromkeys(k.partition(".")[0] for k in SCHEMA))
    guess = difflib.get_close_matches(name, near or list(SCHEMA), n=1)
    hint = f"did you mean {guess[0]}? " if guess else ""
    return ConfigError(f"{name}: unknown {what} ({hint}known: {', '.join(near)})")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not any(s == name for s in SCHEMA):
            if not any(s.startswith(name + ".") for s in SCHEMA):
                raise _unknown(name, "section")
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


MAX_YAML_DEPTH = 32  # the schema nests 3 deep; PyYAML is quadratic in deep nesting


class _DepthLimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing nesting deeper than ``MAX_YAML_DEPTH``: fuzzing found a
    1.6 kB file of nested ``[`` that took seconds to reject."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigError(f"not valid YAML: nested deeper than {MAX_YAML_DEPTH} levels "
                                  "(a config file nests 3)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _flow_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside quotes and comments (PyYAML's scanner is
    quadratic in it, before any composer check could stop it)."""
    depth = deepest = 0
    quote = ""
    comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


class Config:
    """Validated settings; ``cfg["ntp.servers"]`` style access, defaults filled in."""

    def __init__(self, values: dict[str, Any], path: str | None = None) -> None:
        self.path = path
        self._values = {name: key.default for name, key in SCHEMA.items()}
        for name, value in values.items():
            key = SCHEMA.get(name)
            if key is None:
                raise _unknown(name)
            self._values[name] = _validate(name, key, value)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def override(self, **values: Any) -> Config:
        """A copy with some keys replaced (dots written as double underscores)."""
        merged = dict(self._values)
        merged.update({k.replace("__", "."): v for k, v in values.items() if v is not None})
        return Config(merged, self.path)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @classmethod
    def from_text(cls, text: str, path: str | None = None) -> Config:
        if _flow_depth(text) > MAX_YAML_DEPTH:
            raise ConfigError(f"not valid YAML: nested deeper than {MAX_YAML_DEPTH} levels "
                              "(a config file nests 3)")
        try:
            data = yaml.load(text, Loader=_DepthLimitedLoader) or {}  # a SafeLoader
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}") from None
        except RecursionError:  # found by fuzzing: PyYAML recurses per nesting level
            raise ConfigError("not valid YAML: nested too deeply for a config file") from None
        if not isinstance(data, dict):
            raise ConfigError("the file must hold a mapping of keys to values")
        return cls(_flatten(data), path)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path}: {exc.strerror}; pass --config FILE "
                f"(an example lives in etc/chronotick.yaml)") from None
        try:
            return cls.from_text(text, str(path))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
