"""Agent endpoints, node evaluate and drain, and the agent's own Consul services."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.nomad import EmbeddedNomad
from devstack.nomad.testing import requires_embedded_nomad, start_embedded_nomad

from .helpers import allocs, docker_job, quick_health, register, running_allocs, wait_for

pytestmark = pytest.mark.contract


def test_agent_servers_members_join_and_force_leave(nomad_http: httpx.Client) -> None:
    servers = nomad_http.get("/v1/agent/servers")
    assert servers.status_code == 200
    assert all(":" in s for s in servers.json())
    members = nomad_http.get("/v1/agent/members").json()
    assert any(m["Status"] == "alive" for m in members["Members"])
    joined = nomad_http.put("/v1/agent/join", params={"address": "127.0.0.1:1"})
    assert joined.status_code == 200
    assert joined.json()["num_joined"] == 0
    assert joined.json()["error"]
    left = nomad_http.put("/v1/agent/force-leave", params={"node": "no-such-node"})
    assert left.status_code == 200
    health = nomad_http.get("/v1/agent/health", params={"type": "server"}).json()
    assert health["server"]["ok"] is True
    assert "client" not in health


def test_node_evaluate_creates_evaluations(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id))
    alloc = wait_for(lambda: running_allocs(nomad_http, job_id, 1))[0]
    resp = nomad_http.post(f"/v1/node/{alloc['NodeID']}/evaluate", json={})
    assert resp.status_code == 200, resp.text
    ids = resp.json()["EvalIDs"]
    assert ids
    evals = {e["ID"]: e for e in nomad_http.get(f"/v1/job/{job_id}/evaluations").json()}
    assert evals[ids[0]]["TriggeredBy"] == "node-update"


@requires_embedded_nomad
def test_a_drain_lasts_until_the_allocations_have_stopped(
    nomad_http: httpx.Client, job_id: str
) -> None:
    # A container slow to stop keeps the drain going long enough to watch it.
    job = quick_health(docker_job(job_id, count=2, config={"devstack_stop_delay": "1s"}))
    job["TaskGroups"][0]["Migrate"]["MaxParallel"] = 2
    register(nomad_http, job)
    live = wait_for(lambda: running_allocs(nomad_http, job_id, 2))
    wait_for(
        lambda: all(
            (nomad_http.get(f"/v1/allocation/{a['ID']}").json()["DeploymentStatus"] or {}).get(
                "Healthy"
            )
            for a in live
        )
    )
    node_id = live[0]["NodeID"]
    resp = nomad_http.post(
        f"/v1/node/{node_id}/drain",
        json={"DrainSpec": {"Deadline": 60_000_000_000, "IgnoreSystemJobs": False}},
    )
    assert resp.status_code == 200, resp.text
    node = nomad_http.get(f"/v1/node/{node_id}").json()
    assert node["Drain"] is True
    assert node["DrainStrategy"]["DrainSpec"]["Deadline"] == 60_000_000_000
    assert node["SchedulingEligibility"] == "ineligible"

    def drained() -> dict[str, Any] | None:
        n = nomad_http.get(f"/v1/node/{node_id}").json()
        return n if not n["Drain"] else None

    done = wait_for(drained, timeout=20)
    assert done["DrainStrategy"] is None
    assert done["SchedulingEligibility"] == "ineligible"
    assert done["LastDrain"]["Status"] == "complete"
    on_node = [
        a for a in nomad_http.get(f"/v1/node/{node_id}/allocations").json() if a["JobID"] == job_id
    ]
    assert all(a["ClientStatus"] in ("complete", "failed", "lost") for a in on_node)
    replaced = wait_for(lambda: running_allocs(nomad_http, job_id, 2))
    assert all(a["NodeID"] != node_id for a in replaced)
    stub = next(n for n in nomad_http.get("/v1/nodes").json() if n["ID"] == node_id)
    assert stub["Drain"] is False
    assert len(allocs(nomad_http, job_id)) >= 3


@pytest.fixture
def consul(consul_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=consul_server.url, timeout=10) as client:
        yield client


@requires_embedded_nomad
@pytest.mark.integration
def test_the_agent_registers_itself_in_consul(consul_server: Any, consul: httpx.Client) -> None:
    nomad = start_embedded_nomad(consul_addr=consul_server.url, consul_auto_advertise=True)
    try:
        _check_agent_services(nomad, consul)
    finally:
        nomad.stop()


def _check_agent_services(nomad_with_consul: EmbeddedNomad, consul: httpx.Client) -> None:
    def tags(name: str) -> list[list[str]] | None:
        entries = consul.get(f"/v1/catalog/service/{name}").json()
        return sorted(e["ServiceTags"] for e in entries) or None

    wait_for(lambda: tags("nomad") == [["http"], ["rpc"], ["serf"]])
    wait_for(lambda: tags("nomad-client") == [["http"]])
    entries = consul.get("/v1/catalog/service/nomad").json()
    http = next(e for e in entries if e["ServiceTags"] == ["http"])
    assert f"{http['ServiceAddress']}:{http['ServicePort']}" == nomad_with_consul.address
    assert all(e["ServiceID"].startswith("_nomad-server-") for e in entries)
    checks = consul.get("/v1/health/checks/nomad").json()
    assert {c["Name"] for c in checks} == {
        "Nomad Server HTTP Check",
        "Nomad Server RPC Check",
        "Nomad Server Serf Check",
    }

    def all_passing() -> bool:
        states = consul.get("/v1/health/checks/nomad").json()
        states += consul.get("/v1/health/checks/nomad-client").json()
        return len(states) == 4 and all(c["Status"] == "passing" for c in states)

    wait_for(all_passing, timeout=30, interval=0.2)


def test_evaluation_endpoints(nomad_http: httpx.Client, job_id: str) -> None:
    reply = register(nomad_http, docker_job(job_id))
    eval_id = reply["EvalID"]
    wait_for(lambda: running_allocs(nomad_http, job_id, 1))
    listed = nomad_http.get("/v1/evaluations", params={"job": job_id}).json()
    assert eval_id in [e["ID"] for e in listed]
    one = nomad_http.get(f"/v1/evaluation/{eval_id}").json()
    assert (one["ID"], one["JobID"], one["TriggeredBy"]) == (eval_id, job_id, "job-register")
    placed = nomad_http.get(f"/v1/evaluation/{eval_id}/allocations").json()
    assert [a["JobID"] for a in placed] == [job_id]
    missing = nomad_http.get("/v1/evaluation/00000000-0000-0000-0000-000000000000")
    assert (missing.status_code, missing.text) == (404, "eval not found")
    forced = nomad_http.post(f"/v1/job/{job_id}/evaluate", json={})
    assert forced.status_code == 200, forced.text
    again = nomad_http.get(f"/v1/evaluation/{forced.json()['EvalID']}").json()
    assert again["JobID"] == job_id
