"""Persistence of the drift estimate: atomic replace, and every kind of bad file ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chronotickd import statefile

DATA = {"t": 1.7e9, "offset": 1e-4, "freq": 2e-6, "offset_stddev": 1e-5, "freq_stddev": 1e-8,
        "systematic": 2e-4}


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
    json.dumps({k: v for k, v in DATA.items() if k != "freq"} | {"format": 1}),
    json.dumps({**DATA, "freq": "fast", "format": 1}),
    json.dumps({**DATA, "format": 1}).replace("2e-06", "NaN"),
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
