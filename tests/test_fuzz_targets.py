"""The fuzz targets (tests/fuzz_targets.py) on their seed corpus, including the inputs fuzzing
once crashed on, and a short hypothesis run each; the long coverage-guided run is
benchmarks/bench_fuzz.py (atheris)."""

from __future__ import annotations

import sys
from pathlib import Path

import fuzz_targets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CORE = ("wire", "pmc", "config", "statefile")


def test_registry_has_the_core_targets() -> None:
    assert set(CORE) <= set(fuzz_targets.TARGETS)
    for name in CORE:
        assert fuzz_targets.seeds(name), f"no seeds in tests/fuzz_corpus/{name}/"


@pytest.mark.parametrize("name", sorted(fuzz_targets.TARGETS))
def test_seed_corpus(name: str) -> None:
    for data in fuzz_targets.seeds(name):
        fuzz_targets.TARGETS[name](data)


@pytest.mark.parametrize("name", CORE)
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=512))
def test_random_bytes(name: str, data: bytes) -> None:
    fuzz_targets.TARGETS[name](data)


@pytest.mark.parametrize("name", CORE)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_seeds(name: str, data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(fuzz_targets.seeds(name))))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(seed)))
        seed[pos:pos + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=4))
    fuzz_targets.TARGETS[name](bytes(seed))


def test_found_by_fuzzing_stays_fixed() -> None:
    """Deep nesting (RecursionError) and a huge integer (OverflowError) in the state file,
    deep nesting in the config: each a clean rejection now."""
    from chronotickd.config import Config, ConfigError

    with pytest.raises(ConfigError, match=r"nested (too deeply|deeper than)"):
        Config.from_text("ntp: {servers: [" + "[" * 5000 + "]}")
    for name in ("regress-deep-nesting.json", "regress-huge-int.json"):
        data = (fuzz_targets.CORPUS / "statefile" / name).read_bytes()
        fuzz_targets.fuzz_statefile(data)


def test_optional_module_plugs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fuzz_targets_<area>.py with fuzz_<name> functions adds its targets; a missing one is
    skipped."""
    (tmp_path / "fuzz_targets_demo.py").write_text(
        "def fuzz_demo_packet(data: bytes) -> None:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fuzz_targets, "TARGETS", dict(fuzz_targets.TARGETS))
    fuzz_targets._plug_in("fuzz_targets_demo")
    fuzz_targets._plug_in("fuzz_targets_absent")
    assert "demo_packet" in fuzz_targets.TARGETS
    sys.modules.pop("fuzz_targets_demo", None)
