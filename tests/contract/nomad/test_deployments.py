"""Deployments of service jobs with an ``update`` block: health, stability, rollback, API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.nomad import EmbeddedNomad
from devstack.nomad.testing import requires_embedded_nomad

from .helpers import (
    SECOND,
    allocs,
    docker_job,
    evals,
    python_task,
    raw_exec_job,
    register,
    wait_for,
)

pytestmark = pytest.mark.contract


def _update(**extra: Any) -> dict[str, Any]:
    return {
        "MaxParallel": 1,
        "HealthCheck": "task_states",
        "MinHealthyTime": SECOND // 2,
        "HealthyDeadline": 30 * SECOND,
        "ProgressDeadline": 60 * SECOND,
        **extra,
    }


def _job(job_id: str, count: int = 2, image: str = "nginx:1.27", **update: Any) -> dict:
    job = docker_job(job_id, count=count, config={"image": image})
    job["Update"] = _update(**update)
    return job


def _latest(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    resp = http.get(f"/v1/job/{job_id}/deployment")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _settled(http: httpx.Client, job_id: str, version: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        d = _latest(http, job_id)
        if d and d["JobVersion"] == version and d["Status"] in ("successful", "failed"):
            return d
        return None

    return wait_for(done, timeout=40)


def test_a_healthy_deployment_succeeds_and_marks_the_version_stable(
    nomad_http: httpx.Client, job_id: str
) -> None:
    register(nomad_http, _job(job_id))
    first = wait_for(lambda: _latest(nomad_http, job_id))
    assert first["Status"] == "running"
    assert first["StatusDescription"] == "Deployment is running"
    assert first["TaskGroups"]["app"]["DesiredTotal"] == 2
    done = _settled(nomad_http, job_id, 0)
    assert done["Status"] == "successful"
    assert done["StatusDescription"] == "Deployment completed successfully"
    assert done["TaskGroups"]["app"]["HealthyAllocs"] == 2
    versions = nomad_http.get(f"/v1/job/{job_id}/versions").json()["Versions"]
    assert versions[0]["Stable"] is True
    assert nomad_http.get(f"/v1/job/{job_id}").json()["Stable"] is True
    members = nomad_http.get(f"/v1/deployment/allocations/{done['ID']}").json()
    assert len(members) == 2
    for stub in members:
        full = nomad_http.get(f"/v1/allocation/{stub['ID']}").json()
        assert full["DeploymentID"] == done["ID"]
        assert full["DeploymentStatus"]["Healthy"] is True
    listed = nomad_http.get("/v1/deployments").json()
    assert done["ID"] in [d["ID"] for d in listed]
    assert nomad_http.get(f"/v1/deployment/{done['ID']}").json()["JobID"] == job_id
    assert [d["ID"] for d in nomad_http.get(f"/v1/job/{job_id}/deployments").json()] == [done["ID"]]


def test_a_rolling_update_replaces_every_allocation(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _job(job_id, count=3))
    _settled(nomad_http, job_id, 0)
    register(nomad_http, _job(job_id, count=3, image="nginx:1.28"))
    done = _settled(nomad_http, job_id, 1)
    assert done["Status"] == "successful"
    live = [a for a in allocs(nomad_http, job_id) if a["DesiredStatus"] == "run"]
    assert len(live) == 3
    assert {a["JobVersion"] for a in live} == {1}
    triggers = {e["TriggeredBy"] for e in nomad_http.get(f"/v1/job/{job_id}/evaluations").json()}
    assert "deployment-watcher" in triggers
    assert len(nomad_http.get(f"/v1/job/{job_id}/deployments").json()) == 2


def _failing(job_id: str, **update: Any) -> dict[str, Any]:
    job = raw_exec_job(
        job_id,
        [python_task("main", "import sys; sys.exit(1)")],
        RestartPolicy={"Attempts": 0, "Interval": 60 * SECOND, "Delay": SECOND, "Mode": "fail"},
        ReschedulePolicy={"Attempts": 0, "Unlimited": False},
    )
    job["Update"] = _update(**update)
    return job


def test_a_failed_allocation_fails_the_deployment(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _failing(job_id))
    done = _settled(nomad_http, job_id, 0)
    assert done["Status"] == "failed"
    assert done["StatusDescription"] == "Failed due to unhealthy allocations"
    assert done["TaskGroups"]["app"]["UnhealthyAllocs"] >= 1


def test_auto_revert_rolls_back_to_the_last_stable_version(
    nomad_http: httpx.Client, job_id: str
) -> None:
    good = raw_exec_job(job_id, [python_task("main", "import time; time.sleep(120)")])
    good["Update"] = _update(AutoRevert=True)
    register(nomad_http, good)
    assert _settled(nomad_http, job_id, 0)["Status"] == "successful"
    register(nomad_http, _failing(job_id, AutoRevert=True))
    done = _settled(nomad_http, job_id, 1)
    assert done["Status"] == "failed"
    assert done["StatusDescription"] == (
        "Failed due to unhealthy allocations - rolling back to job version 0"
    )
    job = wait_for(lambda: (j := nomad_http.get(f"/v1/job/{job_id}").json())["Version"] == 2 and j)
    assert "sleep" in job["TaskGroups"][0]["Tasks"][0]["Config"]["args"][1]


def test_fail_pause_and_promote(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _job(job_id, MinHealthyTime=120 * SECOND, HealthyDeadline=300 * SECOND))
    d = wait_for(lambda: _latest(nomad_http, job_id))
    paused = nomad_http.post(f"/v1/deployment/pause/{d['ID']}", json={"Pause": True})
    assert paused.status_code == 200, paused.text
    assert nomad_http.get(f"/v1/deployment/{d['ID']}").json()["Status"] == "paused"
    resumed = nomad_http.post(f"/v1/deployment/pause/{d['ID']}", json={"Pause": False})
    assert resumed.status_code == 200
    assert nomad_http.get(f"/v1/deployment/{d['ID']}").json()["StatusDescription"] == (
        "Deployment is running"
    )
    promote = nomad_http.post(f"/v1/deployment/promote/{d['ID']}", json={"All": True})
    assert promote.status_code == 500
    failed = nomad_http.post(f"/v1/deployment/fail/{d['ID']}", json={})
    assert failed.status_code == 200, failed.text
    after = nomad_http.get(f"/v1/deployment/{d['ID']}").json()
    assert (after["Status"], after["StatusDescription"]) == (
        "failed",
        "Deployment marked as failed",
    )
    again = nomad_http.post(f"/v1/deployment/fail/{d['ID']}", json={})
    assert again.status_code == 500
    assert again.text == "can't fail terminal deployment"


def test_unknown_deployment_is_a_404(nomad_http: httpx.Client) -> None:
    resp = nomad_http.get("/v1/deployment/00000000-0000-0000-0000-000000000000")
    assert resp.status_code == 404
    assert resp.text == "deployment not found"


def test_a_job_without_update_has_no_deployment(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id, Type="batch")
    register(nomad_http, job)
    wait_for(lambda: allocs(nomad_http, job_id))
    assert _latest(nomad_http, job_id) is None


@pytest.fixture
def nomad(nomad_with_consul: EmbeddedNomad) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=nomad_with_consul.url, timeout=10) as client:
        yield client


@requires_embedded_nomad
@pytest.mark.integration
@pytest.mark.parametrize(
    ("config", "status"), [({}, "successful"), ({"devstack_unhealthy": True}, "failed")]
)
def test_check_based_health(nomad: httpx.Client, config: dict[str, Any], status: str) -> None:
    check = {"Type": "http", "Path": "/health", "Interval": SECOND, "Timeout": SECOND}
    job = docker_job(
        "checked",
        ports=("http",),
        config=config,
        services=[{"Name": "checked", "PortLabel": "http", "Checks": [check]}],
    )
    job["Update"] = _update(HealthCheck="checks", HealthyDeadline=4 * SECOND)
    job["TaskGroups"][0]["Count"] = 1
    register(nomad, job)
    done = _settled(nomad, "checked", 0)
    assert done["Status"] == status


def _deployment_of(http: httpx.Client, job_id: str, version: int) -> dict[str, Any] | None:
    d = _latest(http, job_id)
    return d if d and d["JobVersion"] == version else None


def _live(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return [a for a in allocs(http, job_id) if a["DesiredStatus"] == "run"]


def _canary_job(job_id: str, image: str = "nginx:1.27", **update: Any) -> dict[str, Any]:
    return _job(job_id, count=2, image=image, Canary=1, **update)


def test_canaries_run_beside_the_old_version_until_promoted(
    nomad_http: httpx.Client, job_id: str
) -> None:
    register(nomad_http, _canary_job(job_id))
    first = _settled(nomad_http, job_id, 0)
    assert first["Status"] == "successful"
    # A first version deploys without canaries.
    assert first["TaskGroups"]["app"]["DesiredCanaries"] == 0
    assert not first["TaskGroups"]["app"]["PlacedCanaries"]

    new = _canary_job(job_id, image="nginx:1.28", MinHealthyTime=3 * SECOND)
    plan = nomad_http.post(f"/v1/job/{job_id}/plan", json={"Job": new, "Diff": True}).json()
    updates = plan["Annotations"]["DesiredTGUpdates"]["app"]
    assert (updates["Canary"], updates["Ignore"], updates["DestructiveUpdate"]) == (1, 2, 0)
    assert updates["Place"] == 0
    assert plan["Diff"]["TaskGroups"][0]["Updates"] == {"canary": 1, "ignore": 2}

    register(nomad_http, new)
    d = wait_for(
        lambda: (
            (x := _deployment_of(nomad_http, job_id, 1))
            and x["TaskGroups"]["app"]["PlacedCanaries"]
            and x
        )
    )
    state = d["TaskGroups"]["app"]
    assert (state["DesiredCanaries"], state["Promoted"], state["DesiredTotal"]) == (1, False, 2)
    assert d["StatusDescription"] == "Deployment is running but requires manual promotion"
    (canary_id,) = state["PlacedCanaries"]
    canary = nomad_http.get(f"/v1/allocation/{canary_id}").json()
    assert canary["DeploymentStatus"]["Canary"] is True
    assert canary["Job"]["Version"] == 1
    # Not healthy yet (min_healthy_time is 3 s): promotion is refused.
    early = nomad_http.post(f"/v1/deployment/promote/{d['ID']}", json={"All": True})
    assert early.status_code == 500
    assert f'Canary allocation "{canary_id}" for group "app" is not healthy' in early.text

    healthy = wait_for(
        lambda: (
            (x := _deployment_of(nomad_http, job_id, 1))
            and x["TaskGroups"]["app"]["HealthyAllocs"] == 1
            and x
        ),
        timeout=20,
    )
    assert healthy["Status"] == "running"
    assert healthy["StatusDescription"] == "Deployment is running but requires manual promotion"
    live = _live(nomad_http, job_id)
    assert sorted(a["JobVersion"] for a in live) == [0, 0, 1]

    promoted = nomad_http.post(
        f"/v1/deployment/promote/{d['ID']}", json={"DeploymentID": d["ID"], "All": True}
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["EvalID"]
    after = nomad_http.get(f"/v1/deployment/{d['ID']}").json()
    assert after["TaskGroups"]["app"]["Promoted"] is True
    assert after["StatusDescription"] == "Deployment is running"
    done = _settled(nomad_http, job_id, 1)
    assert done["Status"] == "successful"
    assert done["TaskGroups"]["app"]["HealthyAllocs"] == 2
    live = _live(nomad_http, job_id)
    assert sorted(a["JobVersion"] for a in live) == [1, 1]
    assert canary_id in {a["ID"] for a in live}  # the canary stays as one of the new version
    assert sorted(a["Name"] for a in live) == [f"{job_id}.app[0]", f"{job_id}.app[1]"]


def test_auto_promote_promotes_healthy_canaries(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _canary_job(job_id, AutoPromote=True))
    _settled(nomad_http, job_id, 0)
    register(nomad_http, _canary_job(job_id, image="nginx:1.28", AutoPromote=True))
    d = wait_for(lambda: _deployment_of(nomad_http, job_id, 1))
    assert d["StatusDescription"] in (
        "Deployment is running pending automatic promotion",
        "Deployment is running",
    )
    done = _settled(nomad_http, job_id, 1)
    assert done["Status"] == "successful"
    assert done["TaskGroups"]["app"]["Promoted"] is True
    assert done["TaskGroups"]["app"]["PlacedCanaries"]
    assert sorted(a["JobVersion"] for a in _live(nomad_http, job_id)) == [1, 1]


def test_failing_a_canary_deployment_keeps_the_old_version(
    nomad_http: httpx.Client, job_id: str
) -> None:
    register(nomad_http, _canary_job(job_id))
    _settled(nomad_http, job_id, 0)
    register(nomad_http, _canary_job(job_id, image="nginx:1.28"))
    d = wait_for(
        lambda: (
            (x := _deployment_of(nomad_http, job_id, 1))
            and x["TaskGroups"]["app"]["PlacedCanaries"]
            and x
        )
    )
    failed = nomad_http.post(f"/v1/deployment/fail/{d['ID']}", json={})
    assert failed.status_code == 200, failed.text
    after = nomad_http.get(f"/v1/deployment/{d['ID']}").json()
    assert (after["Status"], after["StatusDescription"]) == (
        "failed",
        "Deployment marked as failed",
    )
    promote = nomad_http.post(f"/v1/deployment/promote/{d['ID']}", json={"All": True})
    assert promote.status_code == 500
    assert promote.text == "can't promote terminal deployment"
    # The unpromoted canary of a failed deployment stops; the old version stays, and nothing
    # more is replaced.
    nomad_http.post(f"/v1/job/{job_id}/evaluate", json={"JobID": job_id})
    wait_for(lambda: sorted(a["JobVersion"] for a in _live(nomad_http, job_id)) == [0, 0])
    wait_for(lambda: all(e["Status"] != "pending" for e in evals(nomad_http, job_id)))
    assert sorted(a["JobVersion"] for a in _live(nomad_http, job_id)) == [0, 0]
    (canary_id,) = d["TaskGroups"]["app"]["PlacedCanaries"]
    canary = nomad_http.get(f"/v1/allocation/{canary_id}").json()
    assert canary["DesiredStatus"] == "stop"
    assert canary["DesiredDescription"] == "alloc not needed due to job update"


def test_a_new_version_stops_unpromoted_canaries(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _canary_job(job_id))
    _settled(nomad_http, job_id, 0)
    register(nomad_http, _canary_job(job_id, image="nginx:1.28", MinHealthyTime=30 * SECOND))
    first = wait_for(
        lambda: (
            (x := _deployment_of(nomad_http, job_id, 1))
            and x["TaskGroups"]["app"]["PlacedCanaries"]
            and x
        )
    )
    register(nomad_http, _canary_job(job_id, image="nginx:1.29"))
    second = wait_for(
        lambda: (
            (x := _deployment_of(nomad_http, job_id, 2))
            and x["TaskGroups"]["app"]["PlacedCanaries"]
            and x
        )
    )
    old = nomad_http.get(f"/v1/deployment/{first['ID']}").json()
    assert (old["Status"], old["StatusDescription"]) == (
        "cancelled",
        "Cancelled due to newer version of job",
    )
    (stale,) = first["TaskGroups"]["app"]["PlacedCanaries"]
    wait_for(lambda: nomad_http.get(f"/v1/allocation/{stale}").json()["DesiredStatus"] == "stop")
    live = _live(nomad_http, job_id)
    assert sorted(a["JobVersion"] for a in live) == [0, 0, 2]
    assert second["TaskGroups"]["app"]["PlacedCanaries"][0] in {a["ID"] for a in live}
