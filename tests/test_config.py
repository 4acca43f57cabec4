"""Config: strict validation at start (exit 2 naming the key), --check-config, and the shipped
etc/chronotick.yaml (valid, every key present and commented)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import PYTHONPATH, REPO

from chronotickd.config import SCHEMA, Config, ConfigError, _flatten
from chronotickd.daemon import main
from chronotickd.sources.ntp_pool import parse_entries

EXAMPLE = REPO / "etc" / "chronotick.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def run_main(path: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["--config", str(path), *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("text,words", [
    ("ntp:\n  server: [a]\n", ["ntp.server: unknown key", "did you mean ntp.servers"]),
    ("sockets: /tmp/x\n", ["sockets: unknown key", "did you mean socket"]),
    ("clocks:\n  min_samples: 3\n", ["clocks: unknown section", "did you mean clock"]),
    ("ntp:\n  timeout_s: fast\n", ["ntp.timeout_s: expected a number, got 'fast'"]),
    ("ntp:\n  timeout_s: 99\n", ["ntp.timeout_s: expected a number in [0.01, 30]"]),
    ("ntp:\n  timeout_s: true\n", ["ntp.timeout_s: expected a number"]),
    ("clock:\n  min_samples: 2.5\n", ["clock.min_samples: expected a whole number"]),
    ("ntp:\n  servers: pool.ntp.org\n", ["ntp.servers: expected a list of 'host'"]),
    ("ntp:\n  servers: ['h:0']\n", ["ntp.servers[0]: 'h:0': port must be in 1..65535"]),
    ("ntp:\n  servers: ['h:ntp']\n", ["ntp.servers[0]: 'h:ntp'"]),
    ("ntp:\n  servers: [a, {host: b, ntss: true}]\n",
     ["ntp.servers[1].ntss: unknown key", "nts_port"]),
    ("ntp:\n  servers: [{port: 5}]\n", ["ntp.servers[0].host: required"]),
    ("ntp:\n  servers: [{host: b, nts: 1}]\n", ["ntp.servers[0].nts: expected true or false"]),
    ("ntp:\n  servers: [{host: b, maxsources: 0}]\n", ["ntp.servers[0].maxsources"]),
    ("ntp:\n  servers: [{host: time.example.org, minpoll_s: 8}]\n",
     ["ntp.servers[0].minpoll_s: time.example.org is a public server", "64 s"]),
    ("ntp:\n  servers: [{host: b, trusted_ca: /x.pem}]\n",
     ["ntp.servers[0].trusted_ca: only meaningful with nts: true"]),
    ("socket_mode: '0999'\n", ["socket_mode: expected an octal mode"]),
    ("log_level: loud\n", ["log_level: expected one of debug, info, warning, error"]),
    ("socket: 5\n", ["socket: expected a string"]),
    ("- just\n- a list\n", ["must hold a mapping"]),
    ("ntp: [unclosed\n", ["not valid YAML"]),
])
def test_bad_config_exits_2_naming_key_and_expectation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    for extra in ((), ("--check-config",)):
        rc, err = run_main(path, *extra, capsys=capsys)
        assert rc == 2
        assert err.startswith("chronotickd: config error: ")
        assert str(path) in err
        for w in words:
            assert w in err


def test_missing_file_exits_2_with_a_hint(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_main(tmp_path / "nope.yaml", capsys=capsys)
    assert rc == 2 and "cannot read" in err and "etc/chronotick.yaml" in err


def test_real_process_exit_status(tmp_path: Path) -> None:
    """The installed entry point really exits 2 (not just main's return value)."""
    path = write(tmp_path, "ntp:\n  max_delay: 1\n")
    proc = subprocess.run([sys.executable, "-m", "chronotickd", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "ntp.max_delay: unknown key" in proc.stderr and "ntp.max_delay_s" in proc.stderr


def test_check_config_ok_prints_effective_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "ntp:\n  servers: ['127.0.0.1:11123']\n  minpoll_s: 5\n")
    rc = main(["--config", str(path), "--check-config"])
    out, err = capsys.readouterr()
    assert rc == 0 and "is valid" in err
    assert "ntp.servers: ['127.0.0.1:11123']" in out
    assert "ntp.minpoll_s: 5.0" in out
    assert "clock.min_samples: 3" in out  # defaults filled in


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = Config.load(write(tmp_path, "# nothing\n"))
    assert cfg.as_dict() == {name: key.default for name, key in SCHEMA.items()}


def test_command_line_overrides_are_validated_too() -> None:
    cfg = Config({}).override(socket="/tmp/x.sock", state_dir=None, ntp__minpoll_s=5)
    assert cfg["socket"] == "/tmp/x.sock" and cfg["ntp.minpoll_s"] == 5.0
    assert cfg["state_dir"] == SCHEMA["state_dir"].default
    with pytest.raises(ConfigError, match="log_level"):
        Config({}).override(log_level="loud")


def test_shipped_example_validates() -> None:
    cfg = Config.load(EXAMPLE)
    assert cfg.path == str(EXAMPLE)
    assert main(["--config", str(EXAMPLE), "--check-config"]) == 0


def _keys_with_comment(text: str) -> dict[str, bool]:
    """Dotted key → whether a comment sits right above it (or inline)."""
    found: dict[str, bool] = {}
    path: list[tuple[int, str]] = []
    prev = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            prev = ""
            continue
        if stripped.startswith("#"):
            prev = stripped
            continue
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):(.*)$", line)
        if m:
            indent = len(m.group(1))
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, m.group(2)))
            name = ".".join(p for _, p in path)
            found[name] = prev.startswith("#") or "#" in m.group(3)
        prev = stripped
    return found


def test_every_schema_key_is_in_the_example_with_a_comment() -> None:
    text = EXAMPLE.read_text()
    keys = _keys_with_comment(text)
    missing = [k for k in SCHEMA if k not in keys]
    assert not missing, f"add these keys (commented) to etc/chronotick.yaml: {missing}"
    uncommented = [k for k in SCHEMA if not keys[k]]
    assert not uncommented, f"comment these keys in etc/chronotick.yaml: {uncommented}"
    # the example's values are the defaults, except where a comment says otherwise
    assert isinstance(yaml.safe_load(text), dict)


def test_shipped_yaml_and_schema_defaults_agree() -> None:
    """One source of defaults: every key of etc/chronotick.yaml holds the schema default and
    every schema key is documented there."""
    shipped = yaml.safe_load((REPO / "etc" / "chronotick.yaml").read_text())
    flat = _flatten(shipped)
    assert set(flat) == set(SCHEMA), set(flat) ^ set(SCHEMA)
    cfg = Config(flat)
    for name, key in SCHEMA.items():
        assert cfg[name] == key.default, f"{name}: yaml {cfg[name]!r} != schema {key.default!r}"
    servers = parse_entries(cfg["ntp.servers"])
    assert servers and all(s.pool and s.public for s in servers)  # pool names, not addresses


def test_server_entries_string_and_mapping() -> None:
    cfg = Config({"ntp.servers": ["a.example", "127.0.0.1:11123", "[::1]:4123",
                                  {"host": "127.0.0.1", "port": 5, "nts": True, "nts_port": 6,
                                   "trusted_ca": "/c.pem", "minpoll_s": 0.5}]})
    a, b, c, d = parse_entries(cfg["ntp.servers"])
    assert (a.host, a.port, a.pool, a.public) == ("a.example", 123, False, True)
    assert (b.host, b.port, b.public, b.spec) == ("127.0.0.1", 11123, False, "127.0.0.1:11123")
    assert (c.host, c.port) == ("::1", 4123)
    assert (d.nts, d.nts_port, d.trusted_ca, d.minpoll_s, d.spec) == (
        True, 6, "/c.pem", 0.5, "127.0.0.1:5")
    assert parse_entries(["0.pool.ntp.org"])[0].pool  # pool names are pools as strings too
