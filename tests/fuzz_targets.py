"""Fuzz targets: one function per parser of untrusted input, ``fn(data: bytes) -> None``.

A target returns normally for any input the parser handles (a clean rejection included: the
parser's own error type) and raises for a bug: any other exception, a result that breaks the
parser's promise, or a hang. ``TARGETS`` is the registry the runners use
(benchmarks/bench_fuzz.py drives each under atheris, coverage-guided; tests/test_fuzz_targets.py
replays the seed corpus and a short hypothesis run). Seeds live in tests/fuzz_corpus/<name>/.

Other parsers plug in with one line: a module ``fuzz_targets_<area>.py`` beside this one whose
functions are named ``fuzz_<name>(data: bytes)`` is picked up by ``_plug_in`` below (branch
``ntp`` provides tests/fuzz_targets_ntp.py: NTP packets, NTS-KE records, NTS extension fields).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

from chronotick_client.protocol import ProtocolError, decode_body
from chronotickd import statefile
from chronotickd.config import Config, ConfigError
from chronotickd.core.engine import Engine
from chronotickd.core.measurement import Measurement
from chronotickd.handlers import Handlers
from chronotickd.publish import Publisher
from chronotickd.sources import phc
from chronotickd.sources.pmc_parse import (
    PmcParseError,
    parse_pmc_status,
    pmc_failure,
)

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


def _handlers() -> Handlers:
    """Handlers on a synchronized state, so every op has real arithmetic behind it."""
    now = time.time()
    e = Engine()
    for i in range(40):
        e.add(Measurement(now - 200 + 5 * i, 1e-4 + 2e-6 * i, 4e-4, 2e-4, source="ntp"))
    return Handlers(Publisher(e.snapshot(now)))


_H: Handlers | None = None


def fuzz_wire(data: bytes) -> None:
    """A request frame body, as the server decodes and answers it (any peer, any op)."""
    global _H
    if _H is None:
        _H = _handlers()
    try:
        req = decode_body(data)
    except ProtocolError:
        return
    try:
        frame = _H.reply_frame(req)
    except ProtocolError:  # a reply over the frame limit: the server answers frame_too_large
        return
    reply = msgpack.unpackb(frame[4:], raw=False)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert reply["v"] == 1 and isinstance(reply["ok"], bool), reply
    if reply["ok"] and "earliest_ns" in reply["result"]:
        r = reply["result"]
        assert r["earliest_ns"] <= r["corrected_time_ns"] <= r["latest_ns"], r


def fuzz_pmc(data: bytes) -> None:
    """pmc output as the PTP source parses it; the same bytes as the PHC ioctls' buffers."""
    text = data.decode("utf-8", "replace")
    with contextlib.suppress(PmcParseError):
        parse_pmc_status(text)
    pmc_failure(text)
    for size, unpack, most in ((phc.EXTENDED_SIZE, phc.extended_triples, phc.PTP_MAX_SAMPLES),
                               (phc.SYS_OFFSET_SIZE, phc.sys_offset_triples,
                                phc.PTP_MAX_SAMPLES)):
        buf = data[:size].ljust(size, b"\0")
        triples = unpack(buf, most)
        assert len(triples) == most and all(isinstance(v, int) for t in triples for v in t)
        try:
            got = phc.reading(phc.narrowest(triples), "fuzz")
        except phc.PhcError:
            assert all(t[2] < t[0] for t in triples)
        else:
            assert got.half_width_ns >= 0


def fuzz_config(data: bytes) -> None:
    """The YAML config file: a Config or a ConfigError naming the problem, nothing else."""
    try:
        cfg = Config.from_text(data.decode("utf-8", "replace"), "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc), "a ConfigError without a message"
        return
    cfg.as_dict()


_STATE_DIR = Path(tempfile.mkdtemp(prefix="ct-fuzz-state-"))
atexit.register(shutil.rmtree, _STATE_DIR, True)  # no temp dir left behind per import


def fuzz_statefile(data: bytes) -> None:
    """The drift state file: a dict of finite floats or None (logged), never an exception."""
    (_STATE_DIR / statefile.STATE_FILE).write_bytes(data)
    got = statefile.load(_STATE_DIR)
    if got is not None:
        numbers = {k: v for k, v in got.items() if k != "boot_id"}
        assert set(numbers) == set(statefile.REQUIRED)
        assert all(isinstance(v, float) and math.isfinite(v) for v in numbers.values()), got
        assert isinstance(got["boot_id"], str)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": fuzz_wire,
    "pmc": fuzz_pmc,
    "config": fuzz_config,
    "statefile": fuzz_statefile,
}


def _plug_in(module: str) -> None:
    """Add every ``fuzz_<name>`` of an optional module beside this one (absent: skipped)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    for attr in dir(mod):
        fn = getattr(mod, attr)
        if attr.startswith("fuzz_") and callable(fn):
            TARGETS.setdefault(attr.removeprefix("fuzz_"), fn)


for _path in sorted(Path(__file__).resolve().parent.glob("fuzz_targets_*.py")):
    _plug_in(_path.stem)


def seeds(name: str) -> list[bytes]:
    """The seed inputs of a target (tests/fuzz_corpus/<name>/*), sorted by file name."""
    d = CORPUS / name
    return [p.read_bytes() for p in sorted(d.iterdir())] if d.is_dir() else []


def cleanup() -> None:
    for p in _STATE_DIR.glob("*"):
        p.unlink()
    os.rmdir(_STATE_DIR)
