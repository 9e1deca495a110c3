"""``POST /v1/job/<id>/plan`` with ``Diff: true``: Nomad's annotated job diff.

Only the parts of the diff a job template changes are pinned (count, image, env, meta,
resources, services), in the structure Nomad returns: ``Type`` at every level, ``Fields`` with
``Annotations``, ``Objects``, ``TaskGroups[].Tasks[]`` and each group's ``Updates``.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from .helpers import allocs, docker_job, register, running_allocs, wait_for

pytestmark = pytest.mark.contract


def _job(job_id: str, **kw: Any) -> dict[str, Any]:
    job = docker_job(
        job_id,
        ports=("http",),
        services=[
            {
                "Name": f"{job_id}-web",
                "PortLabel": "http",
                "Provider": "nomad",
                "Tags": ["v1", "web"],
            }
        ],
        **kw,
    )
    task = job["TaskGroups"][0]["Tasks"][0]
    task["Env"] = {"MODE": "prod"}
    task["Meta"] = {"team": "core"}
    return job


def _diff(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    resp = http.post(f"/v1/job/{job['ID']}/plan", json={"Job": job, "Diff": True})
    assert resp.status_code == 200, resp.text
    diff = resp.json()["Diff"]
    assert diff is not None
    return dict(diff)


def _by_name(items: list[dict[str, Any]] | None, name: str) -> list[dict[str, Any]]:
    return [i for i in items or [] if i["Name"] == name]


def _one(items: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    found = _by_name(items, name)
    assert len(found) == 1, (name, items)
    return found[0]


def _changed(fields: list[dict[str, Any]] | None) -> dict[str, tuple[str, str, str]]:
    return {f["Name"]: (f["Type"], f["Old"], f["New"]) for f in fields or [] if f["Type"] != "None"}


def _running(http: httpx.Client, job: dict[str, Any]) -> None:
    register(http, job)
    wait_for(lambda: running_allocs(http, job["ID"], job["TaskGroups"][0]["Count"]))


def test_new_job_diff_is_all_added_and_forces_create(nomad_http: httpx.Client, job_id: str) -> None:
    diff = _diff(nomad_http, _job(job_id, count=2))
    assert (diff["Type"], diff["ID"]) == ("Added", job_id)
    group = _one(diff["TaskGroups"], "app")
    assert group["Type"] == "Added"
    assert group["Updates"] == {"create": 2}
    count = _one(group["Fields"], "Count")
    assert (count["Type"], count["Old"], count["New"]) == ("Added", "", "2")
    assert count["Annotations"] == ["forces create"]
    task = _one(group["Tasks"], "main")
    assert task["Type"] == "Added"
    assert task["Annotations"] == ["forces create"]
    assert _changed(task["Fields"])["Driver"] == ("Added", "", "docker")
    assert _changed(task["Fields"])["Env[MODE]"] == ("Added", "", "prod")
    config = _one(task["Objects"], "Config")
    assert config["Type"] == "Added"
    assert _changed(config["Fields"])["image"] == ("Added", "", "nginx:1.27")
    service = _one(group["Objects"], "Service")
    assert service["Type"] == "Added"
    assert _changed(service["Fields"])["Name"] == ("Added", "", f"{job_id}-web")
    tags = _one(service["Objects"], "Tags")
    assert tags["Type"] == "Added"
    assert sorted(f["New"] for f in tags["Fields"]) == ["v1", "web"]
    assert allocs(nomad_http, job_id) == []


def test_count_change_is_a_group_field_with_annotations(
    nomad_http: httpx.Client, job_id: str
) -> None:
    job = _job(job_id, count=2)
    _running(nomad_http, job)
    same = _diff(nomad_http, job)
    assert same["Type"] == "None"
    group = _one(same["TaskGroups"], "app")
    assert (group["Type"], group["Fields"], group["Objects"]) == ("None", None, None)
    assert group["Updates"] == {"ignore": 2}
    assert _one(group["Tasks"], "main")["Type"] == "None"

    up = copy.deepcopy(job)
    up["TaskGroups"][0]["Count"] = 4
    diff = _diff(nomad_http, up)
    assert diff["Type"] == "Edited"
    assert diff["Fields"] is None
    assert diff["Objects"] is None
    group = _one(diff["TaskGroups"], "app")
    assert group["Type"] == "Edited"
    count = _one(group["Fields"], "Count")
    assert (count["Type"], count["Old"], count["New"]) == ("Edited", "2", "4")
    assert count["Annotations"] == ["forces create"]
    assert group["Updates"] == {"create": 2, "in-place update": 2}
    task = _one(group["Tasks"], "main")
    assert (task["Type"], task["Annotations"], task["Fields"], task["Objects"]) == (
        "None",
        None,
        None,
        None,
    )

    down = copy.deepcopy(job)
    down["TaskGroups"][0]["Count"] = 1
    group = _one(_diff(nomad_http, down)["TaskGroups"], "app")
    assert _one(group["Fields"], "Count")["Annotations"] == ["forces destroy"]
    assert group["Updates"]["destroy"] == 1


def test_image_env_meta_and_resources_changes_are_destructive(
    nomad_http: httpx.Client, job_id: str
) -> None:
    job = _job(job_id, count=1)
    _running(nomad_http, job)
    new = copy.deepcopy(job)
    task = new["TaskGroups"][0]["Tasks"][0]
    task["Config"]["image"] = "nginx:1.28"
    task["Env"] = {"MODE": "staging", "DEBUG": "1"}
    task["Meta"] = {}
    task["Resources"]["CPU"] = 250
    diff = _diff(nomad_http, new)
    assert diff["Type"] == "Edited"
    group = _one(diff["TaskGroups"], "app")
    assert group["Type"] == "Edited"
    assert group["Updates"] == {"create/destroy update": 1}
    assert group["Fields"] is None  # nothing of the group's own changed
    tdiff = _one(group["Tasks"], "main")
    assert tdiff["Type"] == "Edited"
    assert tdiff["Annotations"] == ["forces create/destroy update"]
    assert _changed(tdiff["Fields"]) == {
        "Env[DEBUG]": ("Added", "", "1"),
        "Env[MODE]": ("Edited", "prod", "staging"),
        "Meta[team]": ("Deleted", "core", ""),
    }
    assert all(f["Type"] != "None" for f in tdiff["Fields"])  # task fields: changes only
    config = _one(tdiff["Objects"], "Config")
    assert config["Type"] == "Edited"
    assert _changed(config["Fields"]) == {"image": ("Edited", "nginx:1.27", "nginx:1.28")}
    resources = _one(tdiff["Objects"], "Resources")
    assert resources["Type"] == "Edited"
    assert _changed(resources["Fields"]) == {"CPU": ("Edited", "100", "250")}
    # A changed object carries its unchanged fields too, as type None (a contextual diff).
    memory = _one(resources["Fields"], "MemoryMB")
    assert (memory["Type"], memory["Old"], memory["New"]) == ("None", "64", "64")
    assert [o["Name"] for o in tdiff["Objects"]] == sorted(o["Name"] for o in tdiff["Objects"])

    # Group meta is part of every task's combined meta: changing it replaces the allocations.
    meta = copy.deepcopy(job)
    meta["TaskGroups"][0]["Meta"] = {"release": "2"}
    group = _one(_diff(nomad_http, meta)["TaskGroups"], "app")
    assert _changed(group["Fields"]) == {"Meta[release]": ("Added", "", "2")}
    assert group["Updates"] == {"create/destroy update": 1}
    assert _one(group["Tasks"], "main")["Type"] == "None"


def test_service_changes_update_in_place(nomad_http: httpx.Client, job_id: str) -> None:
    job = _job(job_id, count=1)
    _running(nomad_http, job)
    new = copy.deepcopy(job)
    new["TaskGroups"][0]["Services"][0]["Tags"] = ["v2", "web"]
    diff = _diff(nomad_http, new)
    group = _one(diff["TaskGroups"], "app")
    assert group["Type"] == "Edited"
    assert group["Updates"] == {"in-place update": 1}
    assert group["Fields"] is None
    service = _one(group["Objects"], "Service")
    assert service["Type"] == "Edited"
    assert _changed(service["Fields"]) == {}
    assert _one(service["Fields"], "Name")["Type"] == "None"
    tags = _one(service["Objects"], "Tags")
    assert tags["Type"] == "Edited"
    assert {(f["Type"], f["Old"], f["New"]) for f in tags["Fields"]} == {
        ("Deleted", "v1", ""),
        ("Added", "", "v2"),
        ("None", "web", "web"),
    }
    assert _one(group["Tasks"], "main")["Type"] == "None"

    # A task-level service change updates the task in place.
    task_level = copy.deepcopy(job)
    task_level["TaskGroups"][0]["Tasks"][0]["Services"] = [
        {"Name": f"{job_id}-task", "PortLabel": "http", "Provider": "nomad"}
    ]
    group = _one(_diff(nomad_http, task_level)["TaskGroups"], "app")
    tdiff = _one(group["Tasks"], "main")
    assert tdiff["Annotations"] == ["forces in-place update"]
    assert _one(tdiff["Objects"], "Service")["Type"] == "Added"
    assert group["Updates"] == {"in-place update": 1}


def test_added_and_removed_groups_and_job_fields(nomad_http: httpx.Client, job_id: str) -> None:
    job = _job(job_id, count=1)
    _running(nomad_http, job)
    new = copy.deepcopy(job)
    extra = copy.deepcopy(new["TaskGroups"][0])
    extra["Name"] = "worker"
    extra["Services"] = None
    new["TaskGroups"] = [extra]
    new["Meta"] = {"owner": "ops"}
    new["Priority"] = 70
    diff = _diff(nomad_http, new)
    assert diff["Type"] == "Edited"
    assert _changed(diff["Fields"]) == {
        "Meta[owner]": ("Added", "", "ops"),
        "Priority": ("Edited", "50", "70"),
    }
    groups = {g["Name"]: g for g in diff["TaskGroups"]}
    assert list(groups) == ["app", "worker"]
    assert groups["app"]["Type"] == "Deleted"
    assert groups["app"]["Updates"] == {"destroy": 1}
    assert _one(groups["app"]["Tasks"], "main")["Annotations"] == ["forces destroy"]
    assert groups["worker"]["Type"] == "Added"
    assert groups["worker"]["Updates"] == {"create": 1}
    assert _one(groups["worker"]["Tasks"], "main")["Annotations"] == ["forces create"]


def test_in_place_update_keeps_the_allocation_and_updates_its_services(
    nomad_http: httpx.Client, job_id: str
) -> None:
    job = _job(job_id, count=1)
    _running(nomad_http, job)
    first = allocs(nomad_http, job_id)[0]["ID"]
    new = copy.deepcopy(job)
    new["TaskGroups"][0]["Services"][0]["Tags"] = ["v2"]
    new["TaskGroups"][0]["Tasks"][0]["KillTimeout"] = 7 * 1_000_000_000
    group = _one(_diff(nomad_http, new)["TaskGroups"], "app")
    assert group["Updates"] == {"in-place update": 1}
    task = _one(group["Tasks"], "main")
    assert task["Annotations"] == ["forces in-place update"]
    assert _changed(task["Fields"]) == {"KillTimeout": ("Edited", "5000000000", "7000000000")}
    register(nomad_http, new)

    def tags() -> list[str] | None:
        regs = nomad_http.get(f"/v1/service/{job_id}-web").json()
        return regs[0]["Tags"] if regs and regs[0]["Tags"] == ["v2"] else None

    assert wait_for(tags) == ["v2"]
    live = [a for a in allocs(nomad_http, job_id) if a["ClientStatus"] == "running"]
    assert [(a["ID"], a["JobVersion"]) for a in live] == [(first, 1)]


def test_versions_with_diffs(nomad_http: httpx.Client, job_id: str) -> None:
    job = _job(job_id, count=1)
    register(nomad_http, job)
    new = copy.deepcopy(job)
    new["TaskGroups"][0]["Count"] = 2
    new["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = "nginx:1.28"
    register(nomad_http, new)
    plain = nomad_http.get(f"/v1/job/{job_id}/versions").json()
    assert plain["Diffs"] is None
    reply = nomad_http.get(f"/v1/job/{job_id}/versions", params={"diffs": "true"}).json()
    assert [v["Version"] for v in reply["Versions"]] == [1, 0]
    (diff,) = reply["Diffs"]  # version 1 against version 0
    assert (diff["Type"], diff["ID"]) == ("Edited", job_id)
    group = _one(diff["TaskGroups"], "app")
    assert _changed(group["Fields"]) == {"Count": ("Edited", "1", "2")}
    assert group["Updates"] is None  # no plan: no scheduler annotations
    config = _one(_one(group["Tasks"], "main")["Objects"], "Config")
    assert _changed(config["Fields"]) == {"image": ("Edited", "nginx:1.27", "nginx:1.28")}
