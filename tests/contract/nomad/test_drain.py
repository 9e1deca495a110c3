"""Node drains paced like Nomad's drainer: ``migrate.max_parallel`` and the drain deadline."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devstack.nomad.testing import requires_embedded_nomad

from .helpers import SECOND, allocs, docker_job, quick_health, register, wait_for

pytestmark = pytest.mark.contract


@pytest.fixture
def target(nomad_http: httpx.Client) -> Iterator[str]:
    """One ready node that takes every placement while the test sets its job up."""
    nodes = [n for n in nomad_http.get("/v1/nodes").json() if n["Status"] == "ready"]
    if len(nodes) < 2:
        pytest.skip("needs at least two ready nodes")
    chosen, others = nodes[0]["ID"], [n["ID"] for n in nodes[1:]]
    for node_id in others:
        nomad_http.post(f"/v1/node/{node_id}/eligibility", json={"Eligibility": "ineligible"})
    try:
        yield chosen
    finally:
        for node_id in [chosen, *others]:
            nomad_http.post(f"/v1/node/{node_id}/drain", json={"DrainSpec": None})
            nomad_http.post(f"/v1/node/{node_id}/eligibility", json={"Eligibility": "eligible"})


def _release_others(http: httpx.Client, target: str) -> None:
    for n in http.get("/v1/nodes").json():
        if n["ID"] != target:
            http.post(f"/v1/node/{n['ID']}/eligibility", json={"Eligibility": "eligible"})


def _ns(rfc3339: str) -> int:
    """An RFC 3339 UTC timestamp (``...T00:10:47.123456789Z``) as Unix nanoseconds."""
    whole, _, frac = rfc3339.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return int(seconds) * SECOND + int((frac + "0" * 9)[:9])


def _on(http: httpx.Client, job_id: str, node_id: str) -> list[dict[str, Any]]:
    return [a for a in allocs(http, job_id) if a["NodeID"] == node_id]


def _all_healthy(http: httpx.Client, job_id: str, n: int) -> bool:
    live = [a for a in allocs(http, job_id) if a["DesiredStatus"] == "run"]
    return len(live) == n and all(
        (http.get(f"/v1/allocation/{a['ID']}").json()["DeploymentStatus"] or {}).get("Healthy")
        for a in live
    )


def test_a_drain_moves_one_allocation_at_a_time(
    nomad_http: httpx.Client, job_id: str, target: str
) -> None:
    register(nomad_http, quick_health(docker_job(job_id, count=3), migrate_min_healthy=1.5))
    wait_for(lambda: _all_healthy(nomad_http, job_id, 3), timeout=20)
    assert len(_on(nomad_http, job_id, target)) == 3
    _release_others(nomad_http, target)

    resp = nomad_http.post(
        f"/v1/node/{target}/drain",
        json={"DrainSpec": {"Deadline": 120 * SECOND, "IgnoreSystemJobs": False}},
    )
    assert resp.status_code == 200, resp.text
    assert not resp.json()["EvalIDs"]  # the drainer makes the migrations' evaluations

    def stopping() -> list[dict[str, Any]]:
        return [a for a in _on(nomad_http, job_id, target) if a["DesiredStatus"] != "run"]

    first = wait_for(stopping)
    assert first[0]["DesiredDescription"] == "alloc is being migrated"

    def drained() -> dict[str, Any] | None:
        n = nomad_http.get(f"/v1/node/{target}").json()
        return n if n["DrainStrategy"] is None else None

    node = wait_for(drained, timeout=30)
    assert node["LastDrain"]["Status"] == "complete"
    assert node["SchedulingEligibility"] == "ineligible"
    live = [a for a in allocs(nomad_http, job_id) if a["DesiredStatus"] == "run"]
    assert len(live) == 3
    assert all(a["NodeID"] != target for a in live)
    triggers = {e["TriggeredBy"] for e in nomad_http.get(f"/v1/job/{job_id}/evaluations").json()}
    assert "node-drain" in triggers
    # One at a time: each allocation left the node only after the previous one's
    # replacement had been healthy for migrate.min_healthy_time.
    full = [nomad_http.get(f"/v1/allocation/{a['ID']}").json() for a in allocs(nomad_http, job_id)]
    replacement = {a["PreviousAllocation"]: a for a in full if a["NodeID"] != target}
    moved = sorted(
        (a for a in full if a["NodeID"] == target),
        key=lambda a: replacement[a["ID"]]["CreateTime"],
    )
    assert len(moved) == 3
    for prev, nxt in itertools.pairwise(moved):
        healthy = replacement[prev["ID"]]["DeploymentStatus"]
        assert healthy is not None
        assert healthy["Healthy"] is True
        assert replacement[nxt["ID"]]["CreateTime"] >= _ns(healthy["Timestamp"])


def test_the_deadline_stops_what_is_left(
    nomad_http: httpx.Client, job_id: str, target: str
) -> None:
    # Batch allocations are left to finish until the deadline.
    register(nomad_http, docker_job(job_id, count=1, Type="batch"))
    wait_for(lambda: [a for a in _on(nomad_http, job_id, target) if a["ClientStatus"] == "running"])
    _release_others(nomad_http, target)
    started = time.monotonic()
    resp = nomad_http.post(
        f"/v1/node/{target}/drain",
        json={"DrainSpec": {"Deadline": 2 * SECOND, "IgnoreSystemJobs": False}},
    )
    assert resp.status_code == 200, resp.text
    node = nomad_http.get(f"/v1/node/{target}").json()
    assert node["DrainStrategy"]["ForceDeadline"] > node["DrainStrategy"]["StartedAt"]
    time.sleep(0.5)
    (alloc,) = _on(nomad_http, job_id, target)
    assert (alloc["DesiredStatus"], alloc["ClientStatus"]) == ("run", "running")
    assert nomad_http.get(f"/v1/node/{target}").json()["Drain"] is True

    def drained() -> dict[str, Any] | None:
        n = nomad_http.get(f"/v1/node/{target}").json()
        return n if n["DrainStrategy"] is None else None

    node = wait_for(drained, timeout=15)
    assert time.monotonic() - started >= 1.5
    assert node["LastDrain"]["Status"] == "complete"
    stopped = wait_for(
        lambda: [a for a in _on(nomad_http, job_id, target) if a["DesiredStatus"] == "stop"]
    )
    assert stopped[0]["DesiredDescription"] == "alloc is being migrated"
    replacement = wait_for(
        lambda: [
            a
            for a in allocs(nomad_http, job_id)
            if a["NodeID"] != target and a["ClientStatus"] == "running"
        ]
    )
    assert len(replacement) == 1


def _system_job(job_id: str) -> dict[str, Any]:
    job = docker_job(job_id, Type="system")
    job["TaskGroups"][0]["Update"] = None
    return job


@requires_embedded_nomad  # a container slow to stop (devstack_stop_delay)
@pytest.mark.parametrize("ignore_system", [False, True])
def test_system_allocations_go_last_or_stay(
    nomad_http: httpx.Client, job_id: str, target: str, ignore_system: bool
) -> None:
    system_id = f"{job_id}-sys"
    _release_others(nomad_http, target)
    register(nomad_http, _system_job(system_id))
    nomad_http.post(f"/v1/node/{target}/eligibility", json={"Eligibility": "eligible"})
    for n in nomad_http.get("/v1/nodes").json():
        if n["ID"] != target:
            nomad_http.post(f"/v1/node/{n['ID']}/eligibility", json={"Eligibility": "ineligible"})
    # The service allocation on the target node, and the system job there too.
    # Slow to stop, so the order can be watched.
    job = quick_health(
        docker_job(f"{job_id}-svc", count=1, config={"devstack_stop_delay": "1s"}),
        migrate_min_healthy=1.0,
    )
    register(nomad_http, job)
    svc = f"{job_id}-svc"
    wait_for(lambda: _all_healthy(nomad_http, svc, 1), timeout=20)
    wait_for(
        lambda: [a for a in _on(nomad_http, system_id, target) if a["ClientStatus"] == "running"]
    )
    _release_others(nomad_http, target)
    resp = nomad_http.post(
        f"/v1/node/{target}/drain",
        json={"DrainSpec": {"Deadline": 60 * SECOND, "IgnoreSystemJobs": ignore_system}},
    )
    assert resp.status_code == 200, resp.text
    # The service allocation moves first; the system one runs on until it has stopped.
    stopping = wait_for(
        lambda: [
            a
            for a in _on(nomad_http, svc, target)
            if a["DesiredStatus"] == "stop" and a["ClientStatus"] == "running"
        ]
    )
    assert stopping
    system_then = [a for a in _on(nomad_http, system_id, target) if a["DesiredStatus"] == "run"]
    assert system_then

    def drained() -> dict[str, Any] | None:
        n = nomad_http.get(f"/v1/node/{target}").json()
        return n if n["DrainStrategy"] is None else None

    node = wait_for(drained, timeout=20)
    assert node["LastDrain"]["Status"] == "complete"
    system_now = [a for a in _on(nomad_http, system_id, target) if a["DesiredStatus"] == "run"]
    if ignore_system:
        assert system_now  # left running on the drained node
    else:
        assert not system_now
