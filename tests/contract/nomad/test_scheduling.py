"""Placement: bin-packing, ports, constraints, blocked evaluations, node down/drain/eligibility."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devstack.nomad import EmbeddedNomad
from devstack.nomad.testing import requires_embedded_nomad

from .helpers import (
    allocs,
    docker_job,
    evals,
    quick_health,
    register,
    running_allocs,
    wait_for,
)

pytestmark = [pytest.mark.contract, requires_embedded_nomad]


def _healthy(http: httpx.Client, job_id: str, n: int) -> bool:
    live = [a for a in allocs(http, job_id) if a["DesiredStatus"] == "run"]
    return len(live) == n and all(
        (http.get(f"/v1/allocation/{a['ID']}").json()["DeploymentStatus"] or {}).get("Healthy")
        for a in live
    )


def _node_of(http: httpx.Client, job_id: str) -> list[str]:
    return sorted(a["NodeID"] for a in allocs(http, job_id) if a["DesiredStatus"] == "run")


def test_placement_fills_resources_and_ports(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id, count=3, ports=("http",), static={"admin": 9000}))
    live = wait_for(lambda: running_allocs(nomad_http, job_id, 3))
    for stub in live:
        full = nomad_http.get(f"/v1/allocation/{stub['ID']}").json()
        ports = {p["Label"]: p for p in full["AllocatedResources"]["Shared"]["Ports"]}
        assert ports["admin"]["Value"] == 9000
        assert 20000 <= ports["http"]["Value"] <= 32000
        assert ports["http"]["HostIP"] == "127.0.0.1"
        assert "To" not in ports["http"]
        assert full["AllocatedResources"]["Tasks"]["main"]["Cpu"]["CpuShares"] == 100
        assert full["Resources"]["MemoryMB"] == 64
        assert full["TaskResources"]["main"]["CPU"] == 100
    # A static port is per node: three nodes, three allocations, all on different nodes.
    assert len(set(_node_of(nomad_http, job_id))) == 3


def test_bin_packing_prefers_the_fullest_node(
    nomad_server: EmbeddedNomad, nomad_http: httpx.Client
) -> None:
    register(nomad_http, docker_job("big", cpu=3000, memory=100))
    first = wait_for(lambda: running_allocs(nomad_http, "big", 1))[0]["NodeID"]
    register(nomad_http, docker_job("small", cpu=500, memory=100))
    second = wait_for(lambda: running_allocs(nomad_http, "small", 1))[0]["NodeID"]
    assert second == first


def test_memory_exhaustion_blocks_then_unblocks_when_capacity_frees(
    nomad_http: httpx.Client,
) -> None:
    register(nomad_http, docker_job("hog", count=3, memory=7000))
    wait_for(lambda: running_allocs(nomad_http, "hog", 3))
    reply = register(nomad_http, docker_job("late", memory=4000))

    def blocked() -> Any:
        found = evals(nomad_http, "late")
        original = next((e for e in found if e["ID"] == reply["EvalID"]), None)
        if original is None or original["Status"] != "complete":
            return None
        return original, [e for e in found if e["Status"] == "blocked"]

    original, blocked_evals = wait_for(blocked)
    failed = original["FailedTGAllocs"]["app"]
    assert failed["DimensionExhausted"] == {"memory": 3}
    assert failed["NodesExhausted"] == 3
    assert failed["NodesEvaluated"] == 3
    assert failed["NodesAvailable"] == {"dc1": 3}
    assert failed["ResourcesExhausted"]["main"]["MemoryMB"] == 4000
    assert original["BlockedEval"] == blocked_evals[0]["ID"]
    assert blocked_evals[0]["TriggeredBy"] == "queued-allocs"
    assert blocked_evals[0]["StatusDescription"] == "created to place remaining allocations"
    # ?related=true links them both ways (blocked and previous evaluations).
    plain = nomad_http.get(f"/v1/evaluation/{original['ID']}").json()
    assert plain.get("RelatedEvals") is None
    related = nomad_http.get(f"/v1/evaluation/{original['ID']}", params={"related": "true"})
    stubs = related.json()["RelatedEvals"]
    assert [e["ID"] for e in stubs] == [blocked_evals[0]["ID"]]
    assert stubs[0]["Status"] == "blocked"
    assert "FailedTGAllocs" not in stubs[0]
    back = nomad_http.get(f"/v1/evaluation/{blocked_evals[0]['ID']}", params={"related": "1"})
    assert [e["ID"] for e in back.json()["RelatedEvals"]] == [original["ID"]]
    assert allocs(nomad_http, "late") == []
    assert nomad_http.get("/v1/job/late").json()["Status"] == "pending"
    assert nomad_http.get("/v1/job/late/summary").json()["Summary"]["app"]["Queued"] == 1
    nomad_http.delete("/v1/job/hog")
    wait_for(lambda: running_allocs(nomad_http, "late", 1))
    assert nomad_http.get("/v1/job/late/summary").json()["Summary"]["app"]["Queued"] == 0
    assert wait_for(lambda: nomad_http.get("/v1/job/late").json()["Status"] == "running")


def test_a_new_node_unblocks_a_blocked_job(
    nomad_server: EmbeddedNomad, nomad_http: httpx.Client
) -> None:
    register(nomad_http, docker_job("wide", count=4, static={"admin": 9100}))
    wait_for(lambda: running_allocs(nomad_http, "wide", 3))
    blocked = wait_for(lambda: [e for e in evals(nomad_http, "wide") if e["Status"] == "blocked"])
    dims = blocked[0]["FailedTGAllocs"]["app"]["DimensionExhausted"]
    assert dims == {"network: reserved port collision admin=9100": 3}
    new_node = nomad_server.add_node(name="extra")
    live = wait_for(lambda: running_allocs(nomad_http, "wide", 4))
    assert new_node in {a["NodeID"] for a in live}


def test_constraints_on_meta_attr_and_datacenter(
    nomad_server: EmbeddedNomad, nomad_http: httpx.Client
) -> None:
    special = nomad_server.add_node(name="gpu-box", meta={"gpu": "yes"}, datacenter="dc2")
    job = docker_job(
        "picky",
        count=2,
        constraints=[{"LTarget": "${meta.gpu}", "RTarget": "yes", "Operand": "="}],
        group_constraints=[{"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="}],
        Datacenters=["dc*"],
    )
    register(nomad_http, job)
    live = wait_for(lambda: running_allocs(nomad_http, "picky", 1))
    assert {a["NodeID"] for a in live} == {special}
    assert nomad_http.get(f"/v1/node/{special}").json()["Datacenter"] == "dc2"
    # Only one node matches and distinct_hosts is not set: both land there.
    assert wait_for(lambda: running_allocs(nomad_http, "picky", 2))
    register(
        nomad_http,
        docker_job(
            "nowhere",
            constraints=[{"LTarget": "${node.datacenter}", "RTarget": "dc9", "Operand": "="}],
        ),
    )
    blocked = wait_for(
        lambda: [e for e in evals(nomad_http, "nowhere") if e["Status"] == "blocked"]
    )
    failed = blocked[0]["FailedTGAllocs"]["app"]
    assert failed["ConstraintFiltered"] == {"${node.datacenter} = dc9": 3}
    assert failed["NodesFiltered"] == 3


def test_distinct_hosts(nomad_http: httpx.Client) -> None:
    job = docker_job(
        "spread", count=4, constraints=[{"Operand": "distinct_hosts", "RTarget": "true"}]
    )
    register(nomad_http, job)
    live = wait_for(lambda: running_allocs(nomad_http, "spread", 3))
    assert len({a["NodeID"] for a in live}) == 3
    blocked = wait_for(lambda: [e for e in evals(nomad_http, "spread") if e["Status"] == "blocked"])
    assert blocked[0]["FailedTGAllocs"]["app"]["ConstraintFiltered"] == {"distinct_hosts": 3}


def test_missing_driver_filters_nodes(nomad_http: httpx.Client) -> None:
    job = docker_job("exotic")
    job["TaskGroups"][0]["Tasks"][0]["Driver"] = "qemu"
    register(nomad_http, job)
    blocked = wait_for(lambda: [e for e in evals(nomad_http, "exotic") if e["Status"] == "blocked"])
    assert blocked[0]["FailedTGAllocs"]["app"]["ConstraintFiltered"] == {"missing drivers": 3}


def test_node_down_makes_allocs_lost_and_reschedules(
    nomad_server: EmbeddedNomad, nomad_http: httpx.Client
) -> None:
    register(nomad_http, docker_job("survivor", count=2))
    live = wait_for(lambda: running_allocs(nomad_http, "survivor", 2))
    victim = live[0]
    nomad_server.set_node_status(victim["NodeID"], "down")
    lost = wait_for(
        lambda: next(
            (
                a
                for a in allocs(nomad_http, "survivor")
                if a["ID"] == victim["ID"] and a["ClientStatus"] == "lost"
            ),
            None,
        )
    )
    assert lost["DesiredStatus"] == "stop"
    assert lost["DesiredDescription"] == "alloc is lost since its node is down"
    replacement = wait_for(
        lambda: [
            a for a in running_allocs(nomad_http, "survivor", 2) or [] if a["ID"] != live[1]["ID"]
        ]
    )
    assert replacement[0]["NodeID"] != victim["NodeID"]
    assert replacement[0]["Name"] == victim["Name"]
    full = nomad_http.get(f"/v1/allocation/{replacement[0]['ID']}").json()
    assert full["PreviousAllocation"] == victim["ID"]
    node = nomad_http.get(f"/v1/node/{victim['NodeID']}").json()
    assert node["Status"] == "down"
    assert any(e["TriggeredBy"] == "node-update" for e in evals(nomad_http, "survivor"))
    summary = nomad_http.get("/v1/job/survivor/summary").json()["Summary"]["app"]
    assert summary["Lost"] == 1
    assert summary["Running"] == 2


def test_drain_migrates_allocations(nomad_server: EmbeddedNomad, nomad_http: httpx.Client) -> None:
    register(nomad_http, quick_health(docker_job("movable", count=3)))
    live = wait_for(lambda: running_allocs(nomad_http, "movable", 3))
    # The drain moves allocations once their group's health is known.
    wait_for(lambda: _healthy(nomad_http, "movable", 3))
    node_id = live[0]["NodeID"]
    resp = nomad_http.post(
        f"/v1/node/{node_id}/drain",
        json={
            "DrainSpec": {"Deadline": 60_000_000_000, "IgnoreSystemJobs": False},
            "MarkEligible": False,
        },
    )
    assert resp.status_code == 200
    assert resp.json()["NodeModifyIndex"] > 0
    # Nomad's drain request creates no evaluation; the drainer makes the migrations' own.
    assert not resp.json()["EvalIDs"]

    def migrated() -> bool:
        running = [
            a
            for a in allocs(nomad_http, "movable")
            if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run"
        ]
        return len(running) == 3 and all(a["NodeID"] != node_id for a in running)

    wait_for(migrated, timeout=20)
    assert any(e["TriggeredBy"] == "node-drain" for e in evals(nomad_http, "movable"))
    stopped = [a for a in allocs(nomad_http, "movable") if a["NodeID"] == node_id]
    assert all(a["DesiredDescription"] == "alloc is being migrated" for a in stopped)
    node = wait_for(
        lambda: (n := nomad_http.get(f"/v1/node/{node_id}").json())["DrainStrategy"] is None and n
    )
    assert node["SchedulingEligibility"] == "ineligible"
    assert node["LastDrain"]["Status"] == "complete"
    stubs = {n["ID"]: n for n in nomad_http.get("/v1/nodes").json()}
    assert stubs[node_id]["Drain"] is False


def test_eligibility_and_node_endpoints(
    nomad_server: EmbeddedNomad, nomad_http: httpx.Client
) -> None:
    nodes = nomad_http.get("/v1/nodes").json()
    assert len(nodes) == 3
    for key in (
        "Address",
        "ID",
        "Datacenter",
        "Name",
        "NodePool",
        "NodeClass",
        "Version",
        "Drain",
        "SchedulingEligibility",
        "Status",
        "StatusDescription",
        "Drivers",
        "CreateIndex",
        "ModifyIndex",
    ):
        assert key in nodes[0]
    assert "NodeResources" not in nodes[0]
    with_res = nomad_http.get("/v1/nodes", params={"resources": "true"}).json()[0]
    assert with_res["NodeResources"]["Cpu"]["CpuShares"] == 4000
    assert with_res["NodeResources"]["MinDynamicPort"] == 20000
    for node in nodes[1:]:
        r = nomad_http.post(
            f"/v1/node/{node['ID']}/eligibility", json={"Eligibility": "ineligible"}
        )
        assert r.status_code == 200
    register(nomad_http, docker_job("one-place", count=2))
    live = wait_for(lambda: running_allocs(nomad_http, "one-place", 2))
    assert {a["NodeID"] for a in live} == {nodes[0]["ID"]}
    on_node = nomad_http.get(f"/v1/node/{nodes[0]['ID']}/allocations").json()
    assert {a["ID"] for a in on_node} >= {a["ID"] for a in live}
    assert "AllocatedResources" in on_node[0]
    assert nomad_http.get("/v1/node/not-a-node").text == "node not found"
    bad = nomad_http.post(f"/v1/node/{nodes[0]['ID']}/eligibility", json={"Eligibility": "maybe"})
    assert bad.status_code == 400


def test_scale_down_and_update_in_place(nomad_http: httpx.Client) -> None:
    job = docker_job("scaler", count=3)
    register(nomad_http, job)
    before = {a["ID"] for a in wait_for(lambda: running_allocs(nomad_http, "scaler", 3))}
    job["TaskGroups"][0]["Count"] = 1
    register(nomad_http, job)

    def scaled() -> list[dict[str, Any]] | None:
        run = [a for a in allocs(nomad_http, "scaler") if a["DesiredStatus"] == "run"]
        return run if len(run) == 1 else None

    remaining = wait_for(scaled)
    assert remaining[0]["Name"] == "scaler.app[0]"
    assert remaining[0]["ID"] in before
    assert remaining[0]["JobVersion"] == 1
    stopped = [a for a in allocs(nomad_http, "scaler") if a["DesiredStatus"] == "stop"]
    assert {a["DesiredDescription"] for a in stopped} == {"alloc not needed due to job update"}
    job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = "nginx:1.28"
    register(nomad_http, job)
    replaced = wait_for(
        lambda: [a for a in running_allocs(nomad_http, "scaler", 1) or [] if a["ID"] not in before]
    )
    assert replaced[0]["JobVersion"] == 2
    old = next(a for a in allocs(nomad_http, "scaler") if a["ID"] == remaining[0]["ID"])
    assert old["DesiredDescription"] == "alloc is being updated due to job update"
