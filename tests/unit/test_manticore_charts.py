"""Manticore's dashboard and alerts use exactly what the controllers export, and cover all of it.

The exported set is read from the default registry after importing every Manticore controller
(what a ``reconciler run ...`` process serves on ``/metrics``), so a renamed or removed metric,
a misspelled label, or a new domain metric nobody charts fails here.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import anyio
import pytest
import yaml
from prometheus_client import REGISTRY

from reconciler import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/grafana/manticore.json"
ALERTS = ROOT / "charts/prometheus/manticore-alerts.yml"
HAPROXY_ALERTS = ROOT / "charts/prometheus/haproxy-alerts.yml"
MODULES = (
    "controllers.waitlist",
    "controllers.jobs",
    "controllers.allocations",
    "controllers.haproxy_kv",
    "controllers.elb",
    "controllers.expiry",
    "controllers.intake.metrics",
    "controllers.haproxy.metrics",
)
# What each leader-elected Manticore controller exports; each must be alerted on.
ALERTED = {
    "waitlist": ("manticore_waiting_list_", "manticore_queue_wait_", "manticore_capacity_"),
    "jobs": ("manticore_blocked_placements", "manticore_job"),
    "allocations": ("manticore_users_running", "manticore_allocation_"),
    "haproxy-kv": ("manticore_tcp_", "manticore_users_routed", "manticore_web_app_"),
    "elb": ("manticore_elb_",),
    "expiry": ("manticore_expiry_",),
    "manticore-api": ("manticore_api_",),
}
NAME = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def exported() -> dict[str, set[str]]:
    """Every series name served, with the label names it carries."""
    for module in MODULES:
        loaded = importlib.import_module(module)
        init = getattr(loaded, "init", None)
        if module.endswith(".metrics") and callable(init):
            init()
    # Per-load-balancer series exist once the elb controller has started with its settings.
    from controllers import elb
    from controllers.settings import ELBSettings, HAProxySettings

    state = elb.ELBController(
        ELBSettings.model_validate({"ELB_MANTICORE_NAME": ("charts-check",)}), HAProxySettings()
    )
    anyio.run(state.startup, None)
    metrics.init_controller("charts-check")
    metrics.init_source("charts-check", "kv:x/")
    metrics.init_leader("charts-check")
    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        names = {family.name, *(family.name + s for s in SUFFIXES.get(family.type, ()))}
        labels = {label for sample in family.samples for label in sample.labels}
        labels.discard("le")
        for name in names | {s.name for s in family.samples}:
            out.setdefault(name, set()).update(
                labels | ({"le"} if name.endswith("_bucket") else set())
            )
    return out


def manticore_families() -> set[str]:
    return {
        f.name
        for f in REGISTRY.collect()
        if f.name.startswith("manticore_") and f.name != "manticore_kv_value_limit"
    } | {"manticore_kv_value_limit_bytes"}


def referenced(expr: str, series: dict[str, set[str]]) -> dict[str, set[str]]:
    """Metric names in ``expr`` (known prefixes) with the label names its matchers use."""
    found: dict[str, set[str]] = {}
    for match in NAME.finditer(expr):
        name, matchers = match.group(1), match.group(2)
        if not name.startswith(("manticore_", "leader_election_", "controller_runtime_")):
            continue
        labels = set()
        if matchers:
            body = matchers[1:-1].strip()
            for part in filter(None, (p.strip() for p in body.split(","))):
                parsed = MATCHER.fullmatch(part)
                assert parsed, f"bad label matcher {part!r} in {expr}"
                labels.add(parsed.group(1))
        found.setdefault(name, set()).update(labels)
    return found


def well_formed(expr: str) -> None:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            assert depth[closing[char]] >= 0, f"unbalanced {char!r} in {expr}"
    assert all(v == 0 for v in depth.values()), f"unbalanced brackets in {expr}"


def check_expr(expr: str, series: dict[str, set[str]]) -> set[str]:
    well_formed(expr)
    names = referenced(expr, series)
    assert names, f"no known metric in {expr}"
    for name, labels in names.items():
        assert name in series, f"{name} is not exported (in {expr})"
        assert labels <= series[name], f"{name} has no label(s) {labels - series[name]}"
    # Grouping labels must exist on some metric of the expression.
    available = set().union(*(series[n] for n in names)) | {"instance", "job"}
    for group in GROUPING.finditer(expr):
        for label in filter(None, (g.strip() for g in group.group(1).split(","))):
            assert label in available, f"grouping by unknown label {label!r} in {expr}"
    return set(names)


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return exported()


def test_the_dashboard_charts_every_manticore_metric(series: dict[str, set[str]]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "manticore"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    charted: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            charted |= check_expr(target["expr"], series)
    families = manticore_families()
    missing = {f for f in families if not any(n == f or n.startswith(f + "_") for n in charted)}
    assert not missing, f"domain metrics on no panel: {sorted(missing)}"


def test_alerts_are_well_formed_and_cover_each_controller(series: dict[str, set[str]]) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    used: set[str] = set()
    for alert in alerts:
        assert alert["alert"].startswith("Manticore")
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
        found = check_expr(alert["expr"], series)
        assert any(n.startswith("manticore_") for n in found), alert["alert"]
        used |= found
    for controller, prefixes in ALERTED.items():
        assert any(n.startswith(prefixes) for n in used), f"no alert on {controller}'s metrics"


def test_haproxy_host_alerts_use_exported_series_and_labels(series: dict[str, set[str]]) -> None:
    """The per-host rules (one haproxy controller beside each HAProxy): every name, label
    matcher and grouping label exists, and the failures an SRE must hear of are covered."""
    rules = yaml.safe_load(HAPROXY_ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    used: set[str] = set()
    for alert in alerts:
        assert alert["alert"].startswith("ManticoreHAProxy")
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
        found = check_expr(alert["expr"], series)
        assert all(n.startswith("manticore_haproxy_") for n in found), alert["alert"]
        # Not leader-elected: every replica reports its own HAProxy, so rules are per instance.
        assert "instance" in alert["expr"], alert["alert"]
        used |= found
    for essential in (
        "config_valid",
        "reload_failures_total",
        "reloads_total",
        "slots_in_use",
        "slots_total",
        "drift_total",
        "pending_changes",
        "apply_duration_seconds_bucket",
    ):
        assert f"manticore_haproxy_{essential}" in used, essential


def test_leader_only_gauges_are_read_from_the_leader() -> None:
    """A standby keeps the last value it set: gauges of leader-elected controllers are gated."""
    texts = [
        t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])
    ]
    texts += [a["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for a in g["rules"]]
    gated = {
        "manticore_users_running",
        "manticore_users_routed",
        "manticore_elb_users_over_capacity",
    }
    for expr in texts:
        for name in gated:
            if re.search(rf"\b{name}\b", expr):
                assert "leader_election_master_status" in expr, expr
