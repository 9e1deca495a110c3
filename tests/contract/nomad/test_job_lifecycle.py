"""Plan, dispatch, revert, stable and scale: each its own endpoint, never a job named "<id>/x"."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest

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


def _plan(http: httpx.Client, job: dict[str, Any], diff: bool = False) -> dict[str, Any]:
    resp = http.post(f"/v1/job/{job['ID']}/plan", json={"Job": job, "Diff": diff})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _versions(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v1/job/{job_id}/versions").json()["Versions"])


def test_plan_of_a_new_job_commits_nothing(nomad_http: httpx.Client, job_id: str) -> None:
    plan = _plan(nomad_http, docker_job(job_id, count=2), diff=True)
    assert plan["JobModifyIndex"] == 0
    assert plan["Annotations"]["DesiredTGUpdates"]["app"]["Place"] == 2
    assert not plan["FailedTGAllocs"]
    assert plan["Diff"]["Type"] == "Added"
    assert nomad_http.get(f"/v1/job/{job_id}").status_code == 404
    assert nomad_http.get(f"/v1/job/{job_id}/plan").status_code == 405
    assert nomad_http.get("/v1/jobs", params={"prefix": job_id}).json() == []
    assert allocs(nomad_http, job_id) == []


def test_plan_against_the_running_job(nomad_http: httpx.Client, job_id: str) -> None:
    reply = register(nomad_http, docker_job(job_id, count=1))
    wait_for(lambda: allocs(nomad_http, job_id))
    plan = _plan(nomad_http, docker_job(job_id, count=3), diff=True)
    assert plan["JobModifyIndex"] == reply["JobModifyIndex"]
    updates = plan["Annotations"]["DesiredTGUpdates"]["app"]
    # A count change updates the running allocation in place (a new job version).
    assert (updates["Place"], updates["InPlaceUpdate"], updates["Stop"]) == (2, 1, 0)
    group = plan["Diff"]["TaskGroups"][0]
    assert plan["Diff"]["Type"] == "Edited"
    assert {"Name": "Count", "Old": "1", "New": "3", "Type": "Edited"}.items() <= next(
        f for f in group["Fields"] if f["Name"] == "Count"
    ).items()
    # Nothing changed: still one version, one allocation.
    assert len(_versions(nomad_http, job_id)) == 1
    assert len(allocs(nomad_http, job_id)) == 1
    # A changed image replaces the allocation; an identical spec changes nothing.
    changed = _plan(nomad_http, docker_job(job_id, count=1, config={"image": "nginx:1.28"}))
    assert changed["Annotations"]["DesiredTGUpdates"]["app"]["DestructiveUpdate"] == 1
    same = _plan(nomad_http, docker_job(job_id, count=1))
    assert same["Annotations"]["DesiredTGUpdates"]["app"]["Ignore"] == 1
    assert same["Annotations"]["DesiredTGUpdates"]["app"]["Place"] == 0


def test_plan_reports_what_would_not_fit(nomad_http: httpx.Client, job_id: str) -> None:
    plan = _plan(nomad_http, docker_job(job_id, cpu=10_000_000))
    failed = plan["FailedTGAllocs"]["app"]
    assert failed["NodesExhausted"] >= 1
    assert failed["DimensionExhausted"]["cpu"] >= 1


def test_plan_path_and_body_must_agree(nomad_http: httpx.Client, job_id: str) -> None:
    resp = nomad_http.post(f"/v1/job/{job_id}/plan", json={"Job": docker_job("other")})
    assert resp.status_code == 400
    assert resp.text == "Job ID does not match"


def _parameterized(job_id: str) -> dict[str, Any]:
    job = docker_job(job_id, Type="batch")
    job["ParameterizedJob"] = {"Payload": "optional", "MetaRequired": ["user"]}
    return job


def test_dispatch_a_parameterized_job(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _parameterized(job_id))
    assert allocs(nomad_http, job_id) == []
    missing = nomad_http.post(f"/v1/job/{job_id}/dispatch", json={"Meta": {}})
    assert missing.status_code == 500
    assert "Dispatch did not provide required meta keys" in missing.text
    extra = nomad_http.post(
        f"/v1/job/{job_id}/dispatch", json={"Meta": {"user": "u1", "nope": "x"}}
    )
    assert extra.status_code == 500
    assert "Dispatch provided unpermitted meta keys" in extra.text
    payload = base64.b64encode(b"hello").decode()
    resp = nomad_http.post(
        f"/v1/job/{job_id}/dispatch", json={"Meta": {"user": "u1"}, "Payload": payload}
    )
    assert resp.status_code == 200, resp.text
    reply = resp.json()
    child_id = reply["DispatchedJobID"]
    assert re.fullmatch(rf"{re.escape(job_id)}/dispatch-\d+-[0-9a-f]{{8}}", child_id)
    assert reply["EvalID"]
    child = nomad_http.get(f"/v1/job/{child_id}").json()
    assert child["ParentID"] == job_id
    assert child["Dispatched"] is True
    assert child["Meta"]["user"] == "u1"
    assert base64.b64decode(child["Payload"]) == b"hello"
    wait_for(lambda: allocs(nomad_http, child_id))
    nomad_http.delete(f"/v1/job/{child_id}", params={"purge": "true"})


def test_dispatch_needs_a_parameterized_job(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    resp = nomad_http.post(f"/v1/job/{job_id}/dispatch", json={})
    assert resp.status_code == 500
    assert resp.text == f'Specified job "{job_id}" is not a parameterized job'


def test_revert_with_enforce_prior_version(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id, config={"image": "nginx:1.26"}))
    register(nomad_http, docker_job(job_id, config={"image": "nginx:1.27"}))
    url = f"/v1/job/{job_id}/revert"
    wrong = nomad_http.post(url, json={"JobID": job_id, "JobVersion": 0, "EnforcePriorVersion": 0})
    assert wrong.status_code == 500
    assert wrong.text == "Current job has version 1; enforcing version 0"
    current = nomad_http.post(url, json={"JobID": job_id, "JobVersion": 1})
    assert current.status_code == 500
    assert current.text == "can't revert to current version"
    ok = nomad_http.post(url, json={"JobID": job_id, "JobVersion": 0, "EnforcePriorVersion": 1})
    assert ok.status_code == 200, ok.text
    assert ok.json()["EvalID"]
    job = nomad_http.get(f"/v1/job/{job_id}").json()
    assert job["Version"] == 2
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == "nginx:1.26"


def test_stable_flags_a_version(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    register(nomad_http, docker_job(job_id, count=2))
    resp = nomad_http.post(
        f"/v1/job/{job_id}/stable", json={"JobID": job_id, "JobVersion": 0, "Stable": True}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["Index"] > 0
    stable = {v["Version"]: v["Stable"] for v in _versions(nomad_http, job_id)}
    assert stable == {0: True, 1: False}


def test_scale_a_group_and_read_its_status(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id, count=1))
    resp = nomad_http.post(
        f"/v1/job/{job_id}/scale",
        json={"Count": 3, "Target": {"Group": "app"}, "Message": "more users"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["EvalID"]
    job = nomad_http.get(f"/v1/job/{job_id}").json()
    assert job["TaskGroups"][0]["Count"] == 3
    assert job["Version"] == 1
    wait_for(lambda: len(allocs(nomad_http, job_id)) == 3)
    status = nomad_http.get(f"/v1/job/{job_id}/scale").json()
    group = status["TaskGroups"]["app"]
    assert group["Desired"] == 3
    assert status["JobModifyIndex"] == job["JobModifyIndex"]
    event = group["Events"][0]
    assert (event["Count"], event["PreviousCount"], event["Message"]) == (3, 1, "more users")
    missing = nomad_http.post(
        f"/v1/job/{job_id}/scale", json={"Count": 1, "Target": {"Group": "nope"}}
    )
    assert missing.status_code in (400, 500)


@requires_embedded_nomad
def test_unimplemented_sub_resources_are_unknown_paths(
    nomad_http: httpx.Client, job_id: str
) -> None:
    register(nomad_http, docker_job(job_id))
    for path in ("periodic/force", "submission", "actions"):
        resp = nomad_http.post(f"/v1/job/{job_id}/{path}", json={"Job": docker_job(job_id)})
        assert resp.status_code == 404
        assert resp.text == ""
    assert nomad_http.get("/v1/no/such/endpoint").status_code == 404
    stub = nomad_http.get(f"/v1/job/{job_id}/allocations").json()
    for path in ("/v1/node/pools", "/v1/evaluations/count", "/v1/vars", "/v1/metrics"):
        resp = nomad_http.get(path)
        assert (resp.status_code, resp.text) == (404, ""), path
    if stub:
        resp = nomad_http.get(f"/v1/allocation/{stub[0]['ID']}/checks")
        assert (resp.status_code, resp.text) == (404, "")
    ids = [j["ID"] for j in nomad_http.get("/v1/jobs").json()]
    assert ids == [job_id]


def _failing_batch(job_id: str, **reschedule: Any) -> dict[str, Any]:
    task = python_task("main", "import sys; sys.exit(3)")
    return raw_exec_job(
        job_id,
        [task],
        RestartPolicy={"Attempts": 0, "Interval": 60 * SECOND, "Delay": SECOND, "Mode": "fail"},
        ReschedulePolicy={
            "Attempts": 1,
            "Interval": 3600 * SECOND,
            "Delay": 3600 * SECOND,
            "DelayFunction": "constant",
            "Unlimited": False,
            **reschedule,
        },
    ) | {"Type": "batch"}


def _settled_evals(http: httpx.Client, job_id: str) -> bool:
    """Every evaluation processed, but the delayed follow-ups (``WaitUntil``) still waiting."""
    return all(e["Status"] != "pending" or e.get("WaitUntil") for e in evals(http, job_id))


def test_evaluate_with_force_reschedule(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _failing_batch(job_id))
    failed = wait_for(
        lambda: [a for a in allocs(nomad_http, job_id) if a["ClientStatus"] == "failed"]
    )
    # The policy's delay is an hour: a plain evaluation replaces nothing.
    plain = nomad_http.post(f"/v1/job/{job_id}/evaluate", json={"JobID": job_id})
    assert plain.status_code == 200, plain.text
    wait_for(lambda: _settled_evals(nomad_http, job_id))
    assert len(allocs(nomad_http, job_id)) == 1
    forced = nomad_http.post(
        f"/v1/job/{job_id}/evaluate",
        json={"JobID": job_id, "EvalOptions": {"ForceReschedule": True}},
    )
    assert forced.status_code == 200, forced.text
    replacement = wait_for(
        lambda: [a for a in allocs(nomad_http, job_id) if a["ID"] != failed[0]["ID"]]
    )
    full = nomad_http.get(f"/v1/allocation/{replacement[0]['ID']}").json()
    assert full["PreviousAllocation"] == failed[0]["ID"]
    old = nomad_http.get(f"/v1/allocation/{failed[0]['ID']}").json()
    assert old["DesiredTransition"]["ForceReschedule"] is True
    mismatch = nomad_http.post(f"/v1/job/{job_id}/evaluate", json={"JobID": "other"})
    assert mismatch.status_code == 400


def test_force_reschedule_needs_an_enabled_policy(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, _failing_batch(job_id, Attempts=0))
    wait_for(lambda: [a for a in allocs(nomad_http, job_id) if a["ClientStatus"] == "failed"])
    nomad_http.post(
        f"/v1/job/{job_id}/evaluate",
        json={"JobID": job_id, "EvalOptions": {"ForceReschedule": True}},
    )
    wait_for(lambda: _settled_evals(nomad_http, job_id))
    assert len(allocs(nomad_http, job_id)) == 1
