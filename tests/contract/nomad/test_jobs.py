"""Job registration, canonical defaults, validation texts, CAS, versions, delete and status."""

from __future__ import annotations

import httpx
import pytest

from .helpers import SECOND, docker_job, evals, register, wait_for

pytestmark = pytest.mark.contract


def test_register_returns_one_index_for_job_and_eval(nomad_http: httpx.Client, job_id: str) -> None:
    resp = nomad_http.post("/v1/jobs", json={"Job": docker_job(job_id)})
    assert resp.status_code == 200
    body = resp.json()
    assert body["EvalID"]
    assert body["JobModifyIndex"] == body["EvalCreateIndex"] == body["Index"]
    assert resp.headers["X-Nomad-Index"] == str(body["Index"])
    assert resp.headers["Content-Type"].startswith("application/json")


def test_canonical_defaults(nomad_http: httpx.Client, job_id: str) -> None:
    job = {
        "ID": job_id,
        "TaskGroups": [
            {
                "Name": "web",
                "Tasks": [{"Name": "web", "Driver": "docker", "Config": {"image": "nginx"}}],
            }
        ],
    }
    register(nomad_http, job)
    got = nomad_http.get(f"/v1/job/{job_id}").json()
    assert got["Name"] == job_id
    assert got["Type"] == "service"
    assert got["Priority"] == 50
    assert got["Region"] == "global"
    assert got["Namespace"] == "default"
    assert got["Datacenters"] == ["*"]
    assert got["NodePool"] == "default"
    assert got["Version"] == 0
    assert got["Update"]["MaxParallel"] == 1
    assert got["Update"]["MinHealthyTime"] == 10 * SECOND
    group = got["TaskGroups"][0]
    assert group["Count"] == 1
    assert group["EphemeralDisk"]["SizeMB"] == 300
    assert group["RestartPolicy"] == {
        **group["RestartPolicy"],
        "Attempts": 2,
        "Interval": 1800 * SECOND,
        "Delay": 15 * SECOND,
        "Mode": "fail",
    }
    assert group["ReschedulePolicy"]["DelayFunction"] == "exponential"
    assert group["ReschedulePolicy"]["Unlimited"] is True
    task = group["Tasks"][0]
    assert task["Resources"]["CPU"] == 100
    assert task["Resources"]["MemoryMB"] == 300


def test_missing_driver_is_a_500_with_multierror_text(
    nomad_http: httpx.Client, job_id: str
) -> None:
    job = {"ID": job_id, "TaskGroups": [{"Name": "web", "Tasks": [{"Name": "web"}]}]}
    resp = nomad_http.post("/v1/jobs", json={"Job": job})
    assert resp.status_code == 500
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text == (
        "1 error occurred:\n\t* Task group web validation failed: 1 error occurred:\n"
        "\t* Task web validation failed: 1 error occurred:\n\t* Missing task driver\n\n\n\n\n\n"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda j: j.update(Type="foo"), 'Invalid job type: "foo"'),
        (lambda j: j.update(TaskGroups=[]), "Missing job task groups"),
        (
            lambda j: j["TaskGroups"].append(dict(j["TaskGroups"][0])),
            "Job task group 2 redefines 'app' from group 1",
        ),
        (lambda j: j["TaskGroups"][0].update(Tasks=[]), "Missing tasks for task group"),
        (lambda j: j["TaskGroups"][0].update(Count=-1), "Task group count can't be negative"),
        (
            lambda j: j["TaskGroups"][0]["Tasks"][0]["Resources"].update(CPU=0),
            "minimum CPU value is 1; got 0",
        ),
        (
            lambda j: j["TaskGroups"][0].update(
                Services=[{"Name": "web", "PortLabel": "http", "Provider": "nomad"}]
            ),
            'port label "http" referenced by services [web] does not exist',
        ),
        (
            lambda j: j["TaskGroups"][0].update(
                Networks=[{"DynamicPorts": [{"Label": "http"}]}],
                Services=[
                    {
                        "Name": "web",
                        "PortLabel": "http",
                        "Provider": "nomad",
                        "Checks": [{"Type": "http", "Interval": SECOND, "Timeout": SECOND}],
                    }
                ],
            ),
            "http type must have http path",
        ),
        (
            lambda j: j["TaskGroups"][0].update(
                Networks=[{"DynamicPorts": [{"Label": "http"}]}],
                Services=[
                    {
                        "Name": "web",
                        "PortLabel": "http",
                        "Provider": "nomad",
                        "Checks": [{"Type": "tcp", "Interval": SECOND // 2, "Timeout": SECOND}],
                    }
                ],
            ),
            "interval (500ms) cannot be lower than 1s",
        ),
    ],
)
def test_validation_messages(nomad_http: httpx.Client, job_id: str, mutate, message) -> None:  # type: ignore[no-untyped-def]
    job = docker_job(job_id)
    mutate(job)
    resp = nomad_http.post("/v1/jobs", json={"Job": job})
    assert resp.status_code == 500, resp.text
    assert message in resp.text
    assert resp.text.startswith("1 error occurred:") or "errors occurred:" in resp.text


def test_job_id_with_space_is_rejected(nomad_http: httpx.Client) -> None:
    resp = nomad_http.post("/v1/jobs", json={"Job": docker_job("has space")})
    assert resp.status_code == 500
    assert "Job ID contains a space" in resp.text


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"", 400, "Request body is empty"),
        (b"{not json", 400, "invalid character"),
        (b"{}", 400, "Job must be specified"),
        (b'{"Job": {"Name": "x"}}', 400, "Job ID hasn't been provided"),
        (b'{"Job": {"ID": "x", "TaskGroups": "nope"}}', 400, "cannot unmarshal"),
    ],
)
def test_http_layer_errors(nomad_http: httpx.Client, body: bytes, status: int, text: str) -> None:
    resp = nomad_http.post("/v1/jobs", content=body)
    assert resp.status_code == status
    assert text in resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")


def test_path_id_must_match_body(nomad_http: httpx.Client, job_id: str) -> None:
    resp = nomad_http.post(f"/v1/job/{job_id}", json={"Job": docker_job(job_id + "-other")})
    assert resp.status_code == 400
    assert resp.text == "Job ID does not match name"
    ok = nomad_http.post(f"/v1/job/{job_id}", json={"Job": docker_job(job_id)})
    assert ok.status_code == 200


def test_enforce_index_check_and_set(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id)
    missing = nomad_http.post(
        "/v1/jobs", json={"Job": job, "EnforceIndex": True, "JobModifyIndex": 5}
    )
    assert missing.status_code == 500
    assert missing.text == "Enforcing job modify index 5: job does not exist"
    created = register(nomad_http, job, EnforceIndex=True, JobModifyIndex=0)
    again = nomad_http.post(
        "/v1/jobs", json={"Job": job, "EnforceIndex": True, "JobModifyIndex": 0}
    )
    assert again.status_code == 500
    assert again.text == "Enforcing job modify index 0: job already exists"
    stale = created["JobModifyIndex"] - 1
    conflict = nomad_http.post(
        "/v1/jobs", json={"Job": job, "EnforceIndex": True, "JobModifyIndex": stale}
    )
    assert conflict.status_code == 500
    assert conflict.text == (
        f"Enforcing job modify index {stale}: job exists with conflicting job modify index: "
        f"{created['JobModifyIndex']}"
    )
    job["Meta"] = {"rev": "2"}
    updated = register(nomad_http, job, EnforceIndex=True, JobModifyIndex=created["JobModifyIndex"])
    assert updated["JobModifyIndex"] > created["JobModifyIndex"]


def test_identical_spec_makes_no_new_version_but_a_new_eval(
    nomad_http: httpx.Client, job_id: str
) -> None:
    job = docker_job(job_id)
    first = register(nomad_http, job)
    second = register(nomad_http, job)
    assert second["EvalID"]
    assert second["EvalID"] != first["EvalID"]
    assert second["JobModifyIndex"] == first["JobModifyIndex"]
    got = nomad_http.get(f"/v1/job/{job_id}").json()
    assert got["Version"] == 0
    job["Meta"] = {"changed": "yes"}
    third = register(nomad_http, job)
    assert third["JobModifyIndex"] > first["JobModifyIndex"]
    versions = nomad_http.get(f"/v1/job/{job_id}/versions").json()["Versions"]
    assert [v["Version"] for v in versions] == [1, 0]
    assert versions[0]["Meta"] == {"changed": "yes"}


def test_read_missing_job_is_404_text(nomad_http: httpx.Client) -> None:
    resp = nomad_http.get("/v1/job/does-not-exist-anywhere")
    assert resp.status_code == 404
    assert resp.text == "job not found"
    assert int(resp.headers["X-Nomad-Index"]) >= 1


def test_list_with_prefix_and_stub_fields(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    register(nomad_http, docker_job(job_id + "-b"))
    try:
        stubs = nomad_http.get("/v1/jobs", params={"prefix": job_id}).json()
        assert [s["ID"] for s in stubs] == [job_id, job_id + "-b"]
        stub = stubs[0]
        for key in (
            "ParentID",
            "Name",
            "Namespace",
            "Datacenters",
            "NodePool",
            "Type",
            "Priority",
            "Periodic",
            "ParameterizedJob",
            "Stop",
            "Status",
            "StatusDescription",
            "JobSummary",
            "CreateIndex",
            "ModifyIndex",
            "JobModifyIndex",
            "SubmitTime",
        ):
            assert key in stub
        assert "Meta" not in stub
        assert (
            "Meta"
            in nomad_http.get("/v1/jobs", params={"prefix": job_id, "meta": "true"}).json()[0]
        )
        assert nomad_http.get("/v1/jobs", params={"prefix": "zz-nothing-here"}).json() == []
    finally:
        nomad_http.delete(f"/v1/job/{job_id}-b", params={"purge": "true"})


def test_stop_without_purge_keeps_job_and_bumps_version(
    nomad_http: httpx.Client, job_id: str
) -> None:
    register(nomad_http, docker_job(job_id))
    resp = nomad_http.delete(f"/v1/job/{job_id}")
    assert resp.status_code == 200
    body = resp.json()
    assert body["EvalID"]
    assert body["JobModifyIndex"] == body["EvalCreateIndex"]
    assert "VolumeEvalID" in body
    got = nomad_http.get(f"/v1/job/{job_id}").json()
    assert got["Stop"] is True
    assert got["Version"] == 1
    wait_for(lambda: nomad_http.get(f"/v1/job/{job_id}").json()["Status"] == "dead")


def test_purge_removes_job_but_keeps_allocations_visible(
    nomad_http: httpx.Client,
    nomad_target,
    job_id: str,  # type: ignore[no-untyped-def]
) -> None:
    register(nomad_http, docker_job(job_id))
    if nomad_target.embedded:
        wait_for(lambda: nomad_http.get(f"/v1/job/{job_id}/allocations").json())
    resp = nomad_http.delete(f"/v1/job/{job_id}", params={"purge": "true"})
    assert resp.status_code == 200
    assert nomad_http.get(f"/v1/job/{job_id}").status_code == 404
    if nomad_target.embedded:
        everything = nomad_http.get("/v1/allocations").json()
        assert any(a["JobID"] == job_id for a in everything)


def test_delete_unknown_job_is_an_empty_success(nomad_http: httpx.Client) -> None:
    resp = nomad_http.delete("/v1/job/never-registered-anywhere")
    assert resp.status_code == 200
    assert resp.json()["EvalID"] == ""
    assert resp.json()["JobModifyIndex"] == 0


def test_bad_purge_value(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    resp = nomad_http.delete(f"/v1/job/{job_id}", params={"purge": "yes"})
    assert resp.status_code == 500
    assert resp.text.startswith('Failed to parse value of "purge" (yes) as a bool')


def test_purge_and_reregister_is_a_new_incarnation(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    first = nomad_http.get(f"/v1/job/{job_id}").json()
    nomad_http.delete(f"/v1/job/{job_id}", params={"purge": "true"})
    register(nomad_http, docker_job(job_id))
    second = nomad_http.get(f"/v1/job/{job_id}").json()
    assert second["CreateIndex"] > first["CreateIndex"]
    assert second["Version"] == 0


def test_summary_and_evaluations(nomad_http: httpx.Client, job_id: str) -> None:
    reply = register(nomad_http, docker_job(job_id, count=2))
    summary = nomad_http.get(f"/v1/job/{job_id}/summary").json()
    assert summary["JobID"] == job_id
    assert set(summary["Summary"]["app"]) >= {
        "Queued",
        "Starting",
        "Running",
        "Complete",
        "Failed",
        "Lost",
    }
    found = evals(nomad_http, job_id)
    ours = next(e for e in found if e["ID"] == reply["EvalID"])
    assert ours["TriggeredBy"] == "job-register"
    assert ours["JobID"] == job_id


def test_unknown_route_and_wrong_method(nomad_http: httpx.Client) -> None:
    missing = nomad_http.get("/v1/no-such-endpoint")
    assert missing.status_code == 404
    assert missing.text == ""
    wrong = nomad_http.patch("/v1/jobs")
    assert wrong.status_code == 405
    assert wrong.text == "Invalid method"


def test_hostile_ids_never_break_the_server(nomad_http: httpx.Client) -> None:
    for hostile in ("..%2F..%2Fetc", "%00", "a" * 2000, "%E2%98%83", "x/../../y"):
        resp = nomad_http.get(f"/v1/job/{hostile}")
        assert resp.status_code in (404, 400), (hostile, resp.status_code)
        resp = nomad_http.get(f"/v1/allocation/{hostile}")
        assert resp.status_code in (404, 400)
    assert nomad_http.get("/v1/status/leader").status_code == 200
