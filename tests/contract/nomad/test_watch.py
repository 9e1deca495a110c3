"""Blocking queries, the event stream, ACL tokens, and the status/agent endpoints."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from devstack.nomad.testing import NomadTarget, requires_embedded_nomad, start_embedded_nomad

from .helpers import docker_job, register, wait_for

pytestmark = pytest.mark.contract


def test_read_headers(nomad_http: httpx.Client) -> None:
    resp = nomad_http.get("/v1/jobs")
    assert int(resp.headers["X-Nomad-Index"]) >= 1
    assert resp.headers["X-Nomad-KnownLeader"] == "true"
    assert resp.headers["X-Nomad-LastContact"] == "0"


def test_job_blocking_query_wakes_on_change(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    first = nomad_http.get(f"/v1/job/{job_id}")
    index = int(first.headers["X-Nomad-Index"])
    assert index == first.json()["ModifyIndex"]

    def update() -> None:
        time.sleep(0.3)
        job = docker_job(job_id)
        job["Meta"] = {"v": "2"}
        register(nomad_http, job)

    t = threading.Thread(target=update)
    t.start()
    started = time.monotonic()
    resp = nomad_http.get(f"/v1/job/{job_id}", params={"index": index, "wait": "10s"})
    t.join()
    assert resp.status_code == 200
    assert int(resp.headers["X-Nomad-Index"]) > index
    assert resp.json()["Meta"] == {"v": "2"}
    assert 0.2 < time.monotonic() - started < 9


def test_blocking_query_times_out_with_same_index(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    index = int(nomad_http.get(f"/v1/job/{job_id}").headers["X-Nomad-Index"])
    started = time.monotonic()
    resp = nomad_http.get(f"/v1/job/{job_id}", params={"index": index, "wait": "300ms"})
    assert resp.status_code == 200
    assert 0.25 < time.monotonic() - started < 5
    assert int(resp.headers["X-Nomad-Index"]) >= index


@pytest.mark.parametrize(
    ("params", "text"),
    [({"index": "x"}, "Invalid index"), ({"index": "1", "wait": "soon"}, "Invalid wait time")],
)
def test_bad_blocking_parameters(
    nomad_http: httpx.Client, params: dict[str, str], text: str
) -> None:
    resp = nomad_http.get("/v1/jobs", params=params)
    assert resp.status_code == 400
    assert resp.text == text


def test_allocations_index_is_the_table_index(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    wait_for(
        lambda: [
            a
            for a in nomad_http.get(f"/v1/job/{job_id}/allocations").json()
            if a["ClientStatus"] == "running"
        ]
    )
    a = nomad_http.get(f"/v1/job/{job_id}/allocations")
    b = nomad_http.get("/v1/allocations")
    assert a.headers["X-Nomad-Index"] == b.headers["X-Nomad-Index"]


def _stream_lines(
    url: str, headers: dict[str, str], params: Any, want: int, timeout: float = 10, until: str = ""
) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=url, headers=headers, timeout=timeout) as client,
        client.stream("GET", "/v1/event/stream", params=params) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
            if len(lines) >= want and (not until or until in line):
                break
    return lines


def test_event_stream_heartbeat_and_job_events(
    nomad_target: NomadTarget, nomad_http: httpx.Client, job_id: str
) -> None:
    index = int(nomad_http.get("/v1/jobs").headers["X-Nomad-Index"])
    got: list[dict[str, Any]] = []

    def reader() -> None:
        got.extend(
            _stream_lines(
                nomad_target.url,
                nomad_target.headers,
                [("topic", f"Job:{job_id}"), ("topic", "Evaluation"), ("index", str(index + 1))],
                want=3,
            )
        )

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)
    reply = register(nomad_http, docker_job(job_id))
    t.join(15)
    assert got[0] == {}
    events = [e for frame in got[1:] for e in frame["Events"]]
    job_events = [e for e in events if e["Topic"] == "Job"]
    assert job_events
    assert job_events[0]["Key"] == job_id
    assert job_events[0]["Type"] == "JobRegistered"
    assert job_events[0]["Payload"]["Job"]["ID"] == job_id
    eval_events = [e for e in events if e["Topic"] == "Evaluation"]
    assert any(e["Payload"]["Evaluation"]["ID"] == reply["EvalID"] for e in eval_events)
    assert all(frame["Index"] >= index for frame in got[1:])


@requires_embedded_nomad
def test_event_stream_allocation_events_and_replay(
    nomad_http: httpx.Client, nomad_target: NomadTarget, job_id: str
) -> None:
    register(nomad_http, docker_job(job_id))
    wait_for(
        lambda: [
            a
            for a in nomad_http.get(f"/v1/job/{job_id}/allocations").json()
            if a["ClientStatus"] == "running"
        ]
    )
    frames = _stream_lines(
        nomad_target.url,
        {},
        [("topic", f"Allocation:{job_id}"), ("index", "1")],
        want=2,
        until='"ClientStatus":"running"',
    )
    events = [e for f in frames[1:] for e in f["Events"]]
    assert events[0]["Type"] == "PlanResult"
    assert events[0]["FilterKeys"][0] == job_id
    assert events[0]["Payload"]["Allocation"]["Job"] is None
    assert any(e["Payload"]["Allocation"]["ClientStatus"] == "running" for e in events)


def test_bad_topic_is_400(nomad_http: httpx.Client) -> None:
    resp = nomad_http.get("/v1/event/stream", params={"topic": "Job:"})
    assert resp.status_code == 400
    assert resp.text.startswith("Invalid topic query")


@requires_embedded_nomad
def test_heartbeat_interval_is_configurable() -> None:
    server = start_embedded_nomad(event_heartbeat=0.2)
    try:
        started = time.monotonic()
        frames = _stream_lines(server.url, {}, [("topic", "Job:none")], want=3)
        assert frames == [{}, {}, {}]
        assert 0.3 < time.monotonic() - started < 5
    finally:
        server.stop()


def test_acl_permission_denied(nomad_acl_target: NomadTarget) -> None:
    with httpx.Client(base_url=nomad_acl_target.url, timeout=10) as anon:
        for path in ("/v1/jobs", "/v1/allocations", "/v1/nodes"):
            resp = anon.get(path)
            assert resp.status_code == 403
            assert resp.text == "Permission denied"
        assert anon.get("/v1/jobs", headers={"X-Nomad-Token": "wrong"}).status_code == 403
        assert anon.get("/v1/status/leader").status_code == 200
        token = nomad_acl_target.token
        assert anon.get("/v1/jobs", headers={"X-Nomad-Token": token}).status_code == 200
        bearer = anon.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 200
        me = anon.get("/v1/acl/token/self", headers={"X-Nomad-Token": token}).json()
        assert me["Type"] == "management"


def test_status_agent_and_regions(nomad_http: httpx.Client) -> None:
    leader = nomad_http.get("/v1/status/leader")
    assert leader.status_code == 200
    assert ":" in leader.json()
    assert nomad_http.get("/v1/regions").json() == ["global"]
    me = nomad_http.get("/v1/agent/self").json()
    assert me["config"]["Region"] == "global"
    assert me["member"]["Tags"]["region"] == "global"
    assert "Version" in me["config"]["Version"]
