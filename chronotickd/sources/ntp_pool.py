"""NTP server entries of the config, and name resolution into per-address tracks.

An entry of ``ntp.servers`` is a string ('host', 'host:port', '[v6]:port') or a mapping
``{host, port, nts, nts_port, trusted_ca, pool, maxsources, minpoll_s, maxpoll_s}``.
A pool entry (``pool: true``, or a string naming ``*pool.ntp.org``) resolves to up to
``maxsources`` addresses, each its own source; a plain server uses its first address.

Politeness is decided here: a public name (anything but a loopback, private or link-local
address literal, or ``localhost``) may not be polled faster than every 64 s, nor burst more
than 4 requests 2 s apart; a pool's initial bursts together stay within 8 requests.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

PUBLIC_MINPOLL_S = 64.0
PUBLIC_MAXPOLL_S = 1024.0
PUBLIC_BURST = 4
PUBLIC_BURST_INTERVAL_S = 2.0
POOL_BURST_BUDGET = 8  # initial requests to one pool name, all its addresses together
DEFAULT_MAXSOURCES = 4
NTS_KE_PORT = 4460
ENTRY_KEYS = ("host", "port", "nts", "nts_port", "trusted_ca", "pool", "maxsources",
              "minpoll_s", "maxpoll_s")

# (family, (address, port)) pairs, as getaddrinfo gives them
Address = tuple[int, tuple[Any, ...]]
Resolver = Callable[[str, int], list[Address]]


class ServerEntryError(ValueError):
    """An ``ntp.servers`` entry that cannot be used; the text names the key."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One validated ``ntp.servers`` entry. ``None`` poll settings: the ``ntp.*`` default."""

    spec: str  # as shown in names: 'host' or 'host:port'
    host: str
    port: int = 123
    nts: bool = False
    nts_port: int = NTS_KE_PORT
    trusted_ca: str = ""
    pool: bool = False
    maxsources: int = DEFAULT_MAXSOURCES
    minpoll_s: float | None = None
    maxpoll_s: float | None = None
    port_given: bool = False

    @property
    def public(self) -> bool:
        return is_public(self.host)


def is_public(host: str) -> bool:
    """True unless ``host`` is localhost or a loopback/private/link-local address literal."""
    if host.lower() in ("localhost", "localhost."):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return True  # a name: it may resolve anywhere
    return not (ip.is_loopback or ip.is_private or ip.is_link_local)


def split_host_port(text: str) -> tuple[str, int | None]:
    """'host' → (host, None); 'host:port'; '[v6]:port'; a bare IPv6 address has no port."""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ServerEntryError(f"'{text}' is not '[address]' or '[address]:port'")
        return host, _port(rest[1:], text) if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port, text)
    return text, None


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
        raise ServerEntryError(f"'{where}': port must be a number in 1..65535, got {value!r}")
    port = int(value)
    if not 0 < port < 65536:
        raise ServerEntryError(f"'{where}': port must be in 1..65535, got {port}")
    return port


def parse_entry(entry: Any) -> ServerSpec:
    """Validate one ``ntp.servers`` entry (string or mapping) into a ``ServerSpec``."""
    if isinstance(entry, str):
        host, port = split_host_port(entry.strip())
        if not host:
            raise ServerEntryError(f"'{entry}' has no host name")
        return ServerSpec(spec=entry.strip(), host=host, port=port or 123,
                          pool=host.lower().rstrip(".").endswith("pool.ntp.org"),
                          port_given=port is not None)
    if not isinstance(entry, dict):
        raise ServerEntryError(f"expected 'host', 'host:port' or a mapping, got {entry!r}")
    entry = {str(k): v for k, v in entry.items()}
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ServerEntryError(f"{key}: unknown key (known: {', '.join(ENTRY_KEYS)})")
    host = entry.get("host")
    if not isinstance(host, str) or not host:
        raise ServerEntryError("host: required, a host name or address")
    kw: dict[str, Any] = {}
    for key in ("nts", "pool"):
        if key in entry:
            if not isinstance(entry[key], bool):
                raise ServerEntryError(f"{key}: expected true or false, got {entry[key]!r}")
            kw[key] = entry[key]
    if "port" in entry:
        kw["port"], kw["port_given"] = _port(entry["port"], "port"), True
    if "nts_port" in entry:
        kw["nts_port"] = _port(entry["nts_port"], "nts_port")
    if "trusted_ca" in entry:
        if not isinstance(entry["trusted_ca"], str):
            raise ServerEntryError("trusted_ca: expected a path to a PEM file")
        kw["trusted_ca"] = entry["trusted_ca"]
    if "maxsources" in entry:
        n = entry["maxsources"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
            raise ServerEntryError(f"maxsources: expected a whole number in 1..16, got {n!r}")
        kw["maxsources"] = n
    for key in ("minpoll_s", "maxpoll_s"):
        if key in entry:
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.1 <= v <= 86400:
                raise ServerEntryError(f"{key}: expected seconds in [0.1, 86400], got {v!r}")
            kw[key] = float(v)
    spec = host if "port" not in entry else (
        f"[{host}]:{kw['port']}" if ":" in host else f"{host}:{kw['port']}")
    s = ServerSpec(spec=spec, host=host, **kw)
    if s.public and s.minpoll_s is not None and s.minpoll_s < PUBLIC_MINPOLL_S:
        raise ServerEntryError(
            f"minpoll_s: {host} is a public server; it may not be polled faster than every "
            f"{PUBLIC_MINPOLL_S:g} s (faster polling is for loopback/private addresses)")
    if s.minpoll_s is not None and s.maxpoll_s is not None and s.maxpoll_s < s.minpoll_s:
        raise ServerEntryError("maxpoll_s: must not be below minpoll_s")
    if s.trusted_ca and not s.nts:
        raise ServerEntryError("trusted_ca: only meaningful with nts: true")
    return s


def parse_entries(value: Any) -> list[ServerSpec]:
    """The whole ``ntp.servers`` list; errors name the entry's index and key."""
    if not isinstance(value, list):
        raise ServerEntryError(f"expected a list of servers, got {value!r}")
    out = []
    for i, entry in enumerate(value):
        try:
            out.append(parse_entry(entry))
        except ServerEntryError as exc:
            # a mapping's errors start with the key they are about: 'ntp.servers[1].nts: ...'
            raise ServerEntryError(f"[{i}].{exc}" if isinstance(entry, dict) else
                                   f"[{i}]: {exc}") from None
    return out


@dataclass(frozen=True, slots=True)
class PollLimits:
    """The poll settings one address gets after the politeness rules."""

    minpoll_s: float
    maxpoll_s: float
    burst: int
    burst_interval_s: float


def poll_limits(spec: ServerSpec, minpoll_s: float, maxpoll_s: float, burst: int,
                burst_interval_s: float, n_addresses: int = 1) -> PollLimits:
    """Apply the entry's own settings over the ``ntp.*`` defaults, then the public floor."""
    lo = spec.minpoll_s if spec.minpoll_s is not None else minpoll_s
    hi = spec.maxpoll_s if spec.maxpoll_s is not None else maxpoll_s
    if spec.public:
        lo = max(lo, PUBLIC_MINPOLL_S)
        burst = min(burst, PUBLIC_BURST)
        burst_interval_s = max(burst_interval_s, PUBLIC_BURST_INTERVAL_S)
        if spec.pool:  # the pool's terms are per name: share one burst budget
            burst = min(burst, max(1, POOL_BURST_BUDGET // max(1, n_addresses)))
    return PollLimits(lo, max(hi, lo), max(burst, 1), burst_interval_s)


def system_resolver(host: str, port: int) -> list[Address]:
    """getaddrinfo for UDP, deduplicated, in the order the system gives."""
    seen: list[Address] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM):
        item = (family, tuple(sockaddr))
        if item not in seen:
            seen.append(item)
    return seen


def format_address(addr: Address) -> str:
    family, sockaddr = addr
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def with_port(spec: ServerSpec, port: int) -> ServerSpec:
    return replace(spec, port=port)
