"""The deployment material refers only to metrics the framework really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from reconciler import metrics

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b((?:controller_runtime|workqueue|leader_election|reconciler)_[a-z_]+)\b")


def exported_series() -> set[str]:
    metrics.init_controller("charts-check")
    metrics.init_leader("charts-check")
    metrics.init_source("charts-check", "kv:x/")
    return {sample.name for family in REGISTRY.collect() for sample in family.samples}


def referenced(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_alert_rules_are_well_formed_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "charts/prometheus/alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    series = exported_series()
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
        names = referenced(alert["expr"])
        assert names, alert["alert"]
        assert names <= series, f"{alert['alert']} uses unknown {sorted(names - series)}"


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "charts/grafana/reconciler-controllers.json").read_text())
    series = exported_series()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = referenced(expr)
        assert names, expr
        assert names <= series, f"unknown {sorted(names - series)} in {expr}"
