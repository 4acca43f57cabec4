"""packaging/prometheus/: the scrape config and alert rules pass promtool (when installed), the
alert rules' unit tests pass, and the rules and the Grafana dashboard name only metrics the
daemon exports.

promtool is Debian's `prometheus` package. It is not in `make system-deps`: it pulls 37
packages (~96 MB installed) and its postinst starts a Prometheus server. Install it (or
point PROMTOOL at a promtool binary) to run the promtool checks; they skip otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import REPO

from chronotickd.metrics import ChronoTickCollector

KIT = REPO / "packaging" / "prometheus"
NAME = re.compile(r"\b((?:chronotick|process)_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Every sample name the daemon's registry can export (families with their suffixes)."""
    from test_metrics import FakeDaemon

    reg = CollectorRegistry()
    reg.register(ChronoTickCollector(FakeDaemon()))  # type: ignore[arg-type]
    ProcessCollector(registry=reg)
    names = set()
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    return names


def promtool() -> str:
    """$PROMTOOL, promtool on PATH, or the one `make test` unpacks beside the venv's python."""
    beside = Path(sys.executable).parent / "promtool"
    path = os.environ.get("PROMTOOL") or shutil.which("promtool") or (
        str(beside) if beside.exists() else None)
    if not path:
        pytest.skip("promtool not found (`make test` unpacks it from Debian's `prometheus` "
                    "package into .venv/bin); set PROMTOOL=/path/to/promtool")
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60,
                          cwd=KIT)


def test_promtool_check_rules() -> None:
    r = run("check", "rules", "chronotick-alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout + r.stderr


def test_promtool_check_scrape_config() -> None:
    r = run("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_alert_unit_tests() -> None:
    """The alerts fire when they should (bound wide 5 min, unsynchronized 10 min, flapping,
    a step, a leap pending) and not before."""
    r = run("test", "rules", "chronotick-alerts.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_cover_the_issue_and_name_real_metrics() -> None:
    groups = yaml.safe_load((KIT / "chronotick-alerts.yml").read_text())["groups"]
    rules = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
    for alert in ("ChronoTickBoundWide", "ChronoTickNotSynchronized", "ChronoTickSourceFlapping",
                  "ChronoTickClockStep", "ChronoTickLeapPending"):
        assert alert in rules
    known = exported_names()
    for alert, expr in rules.items():
        assert set(NAME.findall(expr)) <= known, (alert, expr)


def test_grafana_dashboard_parses_and_names_real_metrics() -> None:
    dash = json.loads((KIT / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = {n for e in exprs for n in NAME.findall(e)}
    known = exported_names()
    assert used - known == set(), f"dashboard names metrics nobody exports: {used - known}"
    # the headline series are on it
    assert {"chronotick_bound_seconds", "chronotick_offset_seconds", "chronotick_status",
            "chronotick_source_reachability_ratio", "process_resident_memory_bytes"} <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_scrape_config_targets_the_documented_example() -> None:
    cfg = yaml.safe_load((KIT / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "chronotick" and job["metrics_path"] == "/metrics"
    assert (KIT / cfg["rule_files"][0]).exists()
    example = yaml.safe_load((REPO / "etc" / "chronotick.yaml").read_text())
    assert example["metrics"]["listen"] == ""  # off by default in the shipped config
    assert Path(KIT / "grafana-dashboard.json").exists()
