"""The jobs controller's pure decision: ownership first, create/update/purge, drift, once."""

from __future__ import annotations

import copy
from typing import Any

from controllers.jobs.plan import decide, drift, fast_check
from controllers.templates import JobTemplate, TemplateValues

TEMPLATE = JobTemplate.load()


def desired(user: str = "ada", **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "user": user,
        "core_version": "8.2.0",
        "core_build": "default",
        "hmi_type": "generic",
        "hmi_version": "master",
        "domain": "example.com",
        "datacenters": ("dc1",),
    }
    base.update(values)
    return TEMPLATE.render(TemplateValues(**base))


def as_nomad_returns(job: dict[str, Any]) -> dict[str, Any]:
    """What a read gives back: our fields plus Nomad's defaults and bookkeeping."""
    got = copy.deepcopy(job)
    got.update(Status="running", Stop=False, Version=3, JobModifyIndex=41, Priority=50)
    group = got["TaskGroups"][0]
    group["ReschedulePolicy"] = {"Unlimited": True}
    for task in group["Tasks"]:
        task["KillTimeout"] = 5_000_000_000
        task["Resources"]["MemoryMaxMB"] = 0
    for port in group["Networks"][0]["DynamicPorts"]:
        port["HostNetwork"] = "default"
        port["Value"] = 0
    return got


def test_create_purge_and_nothing() -> None:
    assert decide(desired(), None).action == "create"
    assert decide(None, None).action == "none"
    assert decide(None, as_nomad_returns(desired())).action == "purge"
    assert decide(desired(), as_nomad_returns(desired())).action == "none"


def test_a_job_without_our_meta_is_never_touched() -> None:
    foreign = as_nomad_returns(desired())
    foreign["Meta"] = {"team": "someone-else"}
    assert decide(desired(), foreign).action == "foreign"
    assert decide(None, foreign).action == "none"
    impostor = as_nomad_returns(desired())
    impostor["Meta"]["manticore_owner"] = "not-us"
    assert decide(None, impostor).action == "none"


def test_updates_in_place_for_template_drift_and_stop() -> None:
    current = as_nomad_returns(desired())
    newer = desired(core_version="9.0.0")
    assert decide(newer, current).action == "update"
    assert decide(newer, current).reason == "template"
    stopped = {**current, "Stop": True}
    assert decide(desired(), stopped).reason == "stopped"
    edited = copy.deepcopy(current)
    edited["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = "evil/image:latest"
    decision = decide(desired(), edited)
    assert decision.action == "update"
    assert decision.reason == "drift: Job.TaskGroups[0].Tasks[0].Config"


def test_nomads_defaults_are_not_drift() -> None:
    assert drift(as_nomad_returns(desired()), desired()) == []


def test_drift_compares_what_the_template_sets_exactly() -> None:
    assert drift({"a": [1, 2]}, {"a": [1, 2, 3]}) == ["Job.a"]
    assert drift({"a": {"b": 1}}, {"a": {"b": 1.0}}) == []
    assert drift({"a": True}, {"a": 1}) == ["Job.a"]
    assert drift({"a": "x"}, {"a": ["x"]}) == ["Job.a"]
    assert drift({}, {"a": None}) == []
    assert len(drift({}, {str(i): i for i in range(20)})) == 5


def test_fast_check_trusts_only_a_matching_stub() -> None:
    job = desired()
    meta = job["Meta"]
    h = meta["manticore_template"]
    assert fast_check(h, meta, stop=False)
    assert not fast_check(h, meta, stop=True)
    assert not fast_check(h, None, stop=False)
    assert not fast_check(None, meta, stop=False)
    assert not fast_check(h, {**meta, "manticore_template": "other"}, stop=False)
    assert not fast_check(h, {**meta, "manticore_owner": "x"}, stop=False)


def test_maps_nomad_never_fills_are_compared_whole() -> None:
    current = as_nomad_returns(desired())
    added = copy.deepcopy(current)
    added["TaskGroups"][0]["Tasks"][0]["Env"]["EXTRA"] = "by hand"
    assert drift(added, desired()) == ["Job.TaskGroups[0].Tasks[0].Env"]
    new_map = copy.deepcopy(current)
    new_map["TaskGroups"][0]["Meta"] = {"added": "by hand"}
    assert drift(new_map, desired()) == ["Job.TaskGroups[0].Meta"]
    config = copy.deepcopy(current)
    config["TaskGroups"][0]["Tasks"][1]["Config"]["privileged"] = True
    assert drift(config, desired()) == ["Job.TaskGroups[0].Tasks[1].Config"]
    nulls = copy.deepcopy(current)
    nulls["TaskGroups"][0]["Meta"] = None
    assert drift(nulls, desired()) == []
