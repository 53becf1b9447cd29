"""The alert rules, the Prometheus and Alertmanager configs and the dashboards, checked statically by
their own tools (Debian's `prometheus` package: promtool; `prometheus-alertmanager`: amtool) and
against the monitor's metrics: every rule has a unit test that fires it and one that keeps it
quiet, every runbook link lands on a section, every metric a rule or panel names is one the
monitor exports, and the committed dashboard JSON is what monitor/dashboards.py generates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor import dashboards
from monitor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install -y prometheus prometheus-alertmanager)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0 and f"SUCCESS: {len(rules())} rules found" in checked.stdout, checked.stdout
    tested = run(promtool, "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_promtool_and_amtool_accept_the_configs() -> None:
    config = run(tool("promtool"), "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    manager = run(tool("amtool"), "check-config", str(ROOT / "deploy" / "alertmanager" / "alertmanager.yml"))
    assert manager.returncode == 0, manager.stdout + manager.stderr


def test_every_rule_is_tested_firing_and_quiet_and_links_its_runbook_section() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)}
    for rule in rules():
        name = rule["alert"]
        assert any(c["alertname"] == name and c.get("exp_alerts") for c in cases), f"{name}: no firing case"
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in cases), f"{name}: no quiet case"
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and anchor in anchors, f"{name}: runbook section #{anchor} missing"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")


def exported_metric_names() -> set[str]:
    """Every series name the monitor can expose (histograms with their _bucket/_sum/_count)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmonitor_[a-z_]+", expr))


def test_rules_and_panels_name_only_metrics_the_monitor_exports() -> None:
    exported = exported_metric_names()
    for rule in rules():
        assert metric_names(rule["expr"]) <= exported, (rule["alert"], metric_names(rule["expr"]) - exported)
    for spec in dashboards.DASHBOARDS:
        for expr in dashboards.queries(spec):
            assert metric_names(expr) and metric_names(expr) <= exported, (spec.uid, expr)


def test_metric_names_follow_the_prometheus_naming_guide() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name.startswith("monitor_"), name
        assert name.endswith("_total") == (family.type == "counter"), name  # _total only on counters
        assert not re.search(r"_(milliseconds|ms|minutes|hours|percent|bytes_kb)\b", name), name  # base units
        if re.search(r"_(duration|age|timestamp)_", name + "_"):
            assert name.endswith(("_seconds", "_seconds_total")), name  # time in seconds


def test_the_committed_dashboards_are_what_the_code_generates() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    committed = sorted(path.name for path in DASHBOARD_DIR.glob("*.json"))
    assert committed == sorted(f"{spec.uid}.json" for spec in dashboards.DASHBOARDS)
    for spec in dashboards.DASHBOARDS:
        assert (DASHBOARD_DIR / f"{spec.uid}.json").read_text() == dashboards.render(spec), (
            f"{spec.uid}: regenerate with `python -m monitor.dashboards grafana/dashboards`")


def test_every_panel_says_what_it_shows_and_what_to_do_and_alert_panels_link_the_alert_page() -> None:
    titles = set()
    for spec in dashboards.DASHBOARDS:
        board = json.loads((DASHBOARD_DIR / f"{spec.uid}.json").read_text())
        assert board["uid"] == spec.uid and board["description"]
        for panel in board["panels"]:
            assert len(panel["description"]) >= 80, panel["title"]
            assert panel["options"], panel["title"]  # display options set, never null
            assert panel["datasource"]["uid"] == dashboards.DATASOURCE_UID
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == dashboards.DATASOURCE_UID
            if any("monitor_alerts_firing" in t["expr"] for t in panel["targets"]):
                links = panel["fieldConfig"]["defaults"]["links"]
                assert links and links[0]["url"].startswith("${monitor_url}/alerts"), panel["title"]
            titles.add((spec.uid, panel["title"]))
        variables = {v["name"] for v in board["templating"]["list"]}
        assert "monitor_url" in variables and (("segment" in variables) == spec.segment_variable)
    assert len(titles) == sum(len(spec.panels) for spec in dashboards.DASHBOARDS)  # titles unique per board


def test_grafana_provisioning_points_at_the_dashboards_and_the_data_source() -> None:
    provisioning = ROOT / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [s["uid"] for s in sources] == [dashboards.DATASOURCE_UID] and sources[0]["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "monitor.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"].endswith("dashboards")
