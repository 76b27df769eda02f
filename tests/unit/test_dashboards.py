"""The Grafana dashboards, alert rules and Prometheus config under dashboards/ hold
together: every query names a metric jobline exports, every variable is defined, and
the files have the shape Grafana and Prometheus load. (tests/integration/
test_prometheus.py runs the same queries against a real Prometheus.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.telemetry import Metrics

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
BOARDS = sorted(DASHBOARDS.glob("*.json"))
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target
GRAFANA_VARIABLES = {"__rate_interval", "__range", "__interval"}
METRIC = re.compile(r"\b(?:jobline_[a-z0-9_]+|up)\b")
VARIABLE = re.compile(r"\$\{?(\w+)")


def exported_names() -> set[str]:
    """Every series name jobline's /metrics can show, as Prometheus stores it."""
    names: set[str] = set()
    for family in Metrics("any").registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def load_board(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def board_queries(board: dict[str, Any]) -> Iterator[str]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metrics_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def test_the_metric_names_parse_the_way_prometheus_reads_them() -> None:
    expr = 'sum by (vendor) (rate(jobline_retries_total{vendor=~"$vendor"}[5m])) / up'
    assert metrics_in(expr) == {"jobline_retries_total", "up"}
    assert metrics_in("label_values(jobline_vendor_limit, vendor)") == {"jobline_vendor_limit"}
    assert "jobline_jobs_total" in exported_names()
    assert "jobline_job_duration_seconds_bucket" in exported_names()


def test_there_are_dashboards() -> None:
    assert {path.name for path in BOARDS} >= {
        "jobline-jobs.json",
        "jobline-vendors.json",
        "jobline-operations.json",
    }


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_names_an_exported_metric(path: Path) -> None:
    exported = exported_names()
    queries = list(board_queries(load_board(path)))
    assert queries
    for expr in queries:
        named = metrics_in(expr)
        assert named, f"{path.name}: no metric in {expr!r}"
        assert named <= exported, f"{path.name}: {sorted(named - exported)} not exported ({expr})"


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_every_dashboard_variable_is_defined(path: Path) -> None:
    board = load_board(path)
    defined = {variable["name"] for variable in board["templating"]["list"]} | GRAFANA_VARIABLES
    for panel in panels(board):
        for target in panel.get("targets", []):
            used = set(VARIABLE.findall(target["expr"]))
            assert used <= defined, f"{path.name}: {panel['title']}: {used - defined}"
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    board = load_board(path)
    assert board["uid"] and board["title"] and "jobline" in board["tags"]
    assert isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [load_board(path)["uid"] for path in BOARDS]
    assert len(uids) == len(set(uids))


def test_the_dashboards_show_what_operators_need() -> None:
    shown = set().union(*(metrics_in(e) for p in BOARDS for e in board_queries(load_board(p))))
    assert shown >= {
        "jobline_jobs_total",
        "jobline_jobs_current",
        "jobline_job_duration_seconds_bucket",
        "jobline_vendor_inflight",
        "jobline_vendor_limit",
        "jobline_queue_depth",
        "jobline_retries_total",
        "jobline_failovers_total",
        "jobline_circuit_state",
        "jobline_dead_letters_total",
        "jobline_dead_letters_open",
        "jobline_credits_total",
        "jobline_webhook_rejections_total",
        "jobline_sweeper_recoveries_total",
        "jobline_invariant_violations",
        "jobline_vendor_wasted_tasks_total",
        "jobline_submits_in_doubt_total",
        "jobline_vendor_refusals_total",
    }


def test_every_alert_names_exported_metrics_and_says_what_to_do() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "JoblineInvariantViolated",
        "JoblineDeadLettersGrowing",
        "JoblineCircuitOpen",
        "JoblineZombieJobs",
        "JoblineVendorAtLimit",
        "JoblineVendorRefused",
    }
    for rule in rules:
        named = metrics_in(rule["expr"])
        assert named and named <= exported, f"{rule['alert']}: {sorted(named - exported)}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_alert_tests_use_exported_series() -> None:
    tests = yaml.safe_load((DASHBOARDS / "alerts_test.yml").read_text())["tests"]
    exported = exported_names() | PROMETHEUS_OWN
    for test in tests:
        for series in test["input_series"]:
            assert series["series"].split("{")[0] in exported, series
    tested = {
        t["alertname"] for test in tests for t in test["alert_rule_test"] if t.get("exp_alerts")
    }
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert has a firing test"


def test_prometheus_scrapes_one_gateway_address_and_loads_the_rules() -> None:
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "jobline" and job["metrics_path"] == "/metrics"
    (static,) = job["static_configs"]
    assert len(static["targets"]) == 1, "one address: any gateway replica answers for all actors"


def test_grafana_provisioning() -> None:
    provisioning = DASHBOARDS / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "jobline.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "jobline.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file" and provider["options"]["path"]
