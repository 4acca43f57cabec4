"""Logging: to journald with structured fields under systemd, to stderr otherwise.

"Under systemd" means stderr *is* the journal stream (``$JOURNAL_STREAM`` names its
device:inode) or the service manager started us (``$INVOCATION_ID``) and a journal socket
exists. Then python-systemd's ``JournalHandler`` sends each record with PRIORITY, LOGGER,
CODE_FILE/LINE/FUNC, THREAD_NAME, SYSLOG_IDENTIFIER=chronotickd and CHRONOTICK_VERSION, plus
any upper-case ``extra=`` fields (``journalctl CHRONOTICK_SOCKET=...``). Without python-systemd
the stderr lines carry ``<N>`` syslog prefixes, which journald turns into priorities.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from chronotickd import __version__

JOURNAL_SOCKET = "/run/systemd/journal/socket"
STDERR_FORMAT = "%(asctime)s chronotickd[%(process)d] %(levelname)s %(message)s"
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


def stderr_is_journal(env: Mapping[str, str], stream: TextIO) -> bool:
    """True when $JOURNAL_STREAM names the very file stderr is (not one inherited by chance)."""
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def under_systemd(env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    return stderr_is_journal(env, stream) or bool(env.get("INVOCATION_ID"))


class _SyslogPrefixFormatter(logging.Formatter):
    """``<6>message``: journald reads the priority from the prefix (SyslogLevelPrefix=)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def journal_handler() -> logging.Handler | None:
    """python-systemd's JournalHandler with our constant fields, or None without the extra."""
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found]
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="chronotickd", CHRONOTICK_VERSION=__version__)


def setup_logging(level: str, env: Mapping[str, str] | None = None,
                  stream: TextIO | None = None) -> str:
    """Configure the root logger at ``level``; returns where logs go: journal|stderr."""
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    handler: logging.Handler | None = None
    target = "stderr"
    systemd = under_systemd(env, stream)
    if systemd and os.path.exists(JOURNAL_SOCKET):
        handler = journal_handler()
        if handler is not None:
            target = "journal"
    if handler is None:
        handler = logging.StreamHandler(stream)
        if systemd:  # journald adds time, pid and identifier itself
            handler.setFormatter(_SyslogPrefixFormatter("%(message)s"))
        else:
            handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return target
