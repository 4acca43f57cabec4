"""Persistence of the drift estimate: atomic replace, and every kind of bad file ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chronotickd import statefile

DATA = {"raw": 5000.0, "epoch": 1.7e9, "offset": 1e-4, "freq": 2e-6, "offset_stddev": 1e-5,
        "freq_stddev": 1e-8, "systematic": 2e-4, "saved_raw": 5060.0, "saved_real": 1.7e9 + 5060,
        "boot_id": "0b5e7a1c-0000-4000-8000-000000000001"}
OLD_FORMAT_1 = {"t": 1.7e9, "offset": 1e-4, "freq": 2e-6, "offset_stddev": 1e-5,
                "freq_stddev": 1e-8, "systematic": 2e-4, "format": 1}


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    path = statefile.save(tmp_path / "sub", DATA)
    assert path == tmp_path / "sub" / statefile.STATE_FILE
    assert statefile.load(tmp_path / "sub") == DATA
    statefile.save(tmp_path / "sub", {**DATA, "freq": 3e-6})
    assert statefile.load(tmp_path / "sub")["freq"] == 3e-6
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [statefile.STATE_FILE]


def test_missing_is_none_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert statefile.load(tmp_path) is None
    assert caplog.text == ""


@pytest.mark.parametrize("content", [
    "{not json",
    "[]",
    json.dumps({**DATA, "format": 99}),
    json.dumps(OLD_FORMAT_1),  # written by an older chronotickd (REALTIME time base)
    json.dumps({**DATA, "format": 2, "writer": "someone-else"}),  # foreign
    json.dumps({"raw": 1.0}),  # foreign: no format, no writer
    json.dumps({k: v for k, v in DATA.items() if k != "freq"} | {"format": 2}),
    json.dumps({k: v for k, v in DATA.items() if k != "boot_id"} | {"format": 2}),
    json.dumps({**DATA, "freq": "fast", "format": 2}),
    json.dumps({**DATA, "format": 2}).replace("2e-06", "NaN"),
])
def test_bad_file_is_ignored_with_one_warning(tmp_path: Path, content: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / statefile.STATE_FILE).write_text(content)
    assert statefile.load(tmp_path) is None
    assert caplog.text.count("ignoring state file") == 1


def test_failed_save_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statefile.save(tmp_path, DATA)

    def boom(*a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", boom)
    with pytest.raises(OSError):
        statefile.save(tmp_path, {**DATA, "freq": 9e-6})
    monkeypatch.undo()
    assert statefile.load(tmp_path) == DATA
    assert [p.name for p in tmp_path.iterdir()] == [statefile.STATE_FILE]


def test_boot_id_and_same_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text(DATA["boot_id"] + "\n")
    monkeypatch.setenv(statefile.BOOT_ID_ENV, str(boot))
    assert statefile.boot_id() == DATA["boot_id"].replace("-", "")
    rec = statefile.record({"freq": 1e-6}, 10.0, 1.7e9)
    assert rec == {"freq": 1e-6, "saved_raw": 10.0, "saved_real": 1.7e9,
                   "boot_id": DATA["boot_id"].replace("-", "")}
    assert statefile.same_boot(DATA, raw_now=6000.0)
    assert not statefile.same_boot(DATA, raw_now=100.0)  # raw went back: it rebooted
    boot.write_text("another-boot\n")
    assert not statefile.same_boot(DATA, raw_now=6000.0)
    boot.unlink()  # unreadable: never assume the same boot
    assert statefile.boot_id() == "" and not statefile.same_boot(DATA, raw_now=6000.0)


def test_boot_id_from_systemd_when_proc_is_hidden(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit's ProcSubset=pid hides /proc/sys; it passes systemd's %b (no dashes) instead,
    and a restart in the same boot must still be recognised as one."""
    monkeypatch.setattr(statefile, "BOOT_ID_FILE", str(tmp_path / "hidden"))
    monkeypatch.delenv(statefile.BOOT_ID_ENV, raising=False)
    monkeypatch.delenv(statefile.BOOT_ID_VALUE_ENV, raising=False)
    assert statefile.boot_id() == "" and not statefile.same_boot(DATA, raw_now=6000.0)
    monkeypatch.setenv(statefile.BOOT_ID_VALUE_ENV, DATA["boot_id"].replace("-", "").upper())
    assert statefile.same_boot(DATA, raw_now=6000.0)  # dashed file form == systemd's %b
    monkeypatch.setenv(statefile.BOOT_ID_VALUE_ENV, "0" * 32)
    assert not statefile.same_boot(DATA, raw_now=6000.0)
