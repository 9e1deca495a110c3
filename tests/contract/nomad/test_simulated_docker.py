"""Simulated docker tasks serve their ports, so the real checks the embedded Consul runs pass.

Emulator-only: the fault knobs (``devstack_unhealthy``, ``devstack_listen_delay``, node meta)
are devstack conventions, and a real docker task's ports depend on its image.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.nomad import EmbeddedNomad
from devstack.nomad.testing import requires_embedded_nomad

from .helpers import SECOND, allocs, docker_job, register, running_allocs, wait_for

pytestmark = [pytest.mark.contract, requires_embedded_nomad]


def _ports(http: httpx.Client, job_id: str) -> dict[str, tuple[str, int]]:
    live = wait_for(lambda: running_allocs(http, job_id, 1))
    full = http.get(f"/v1/allocation/{live[0]['ID']}").json()
    res = full["AllocatedResources"]
    out = {p["Label"]: (p["HostIP"], p["Value"]) for p in res["Shared"]["Ports"] or []}
    for task in res["Tasks"].values():
        for net in task["Networks"] or []:
            for p in net.get("DynamicPorts") or []:
                out[p["Label"]] = (net["IP"], p["Value"])
    return out


def _get(addr: tuple[str, int], path: str = "/") -> int | None:
    try:
        return httpx.get(f"http://{addr[0]}:{addr[1]}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return None


def _accepts(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=2):
            return True
    except OSError:
        return False


def test_a_running_container_answers_on_every_port(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id, ports=("http", "broker", "tcp")))
    ports = _ports(nomad_http, job_id)
    assert set(ports) == {"http", "broker", "tcp"}
    for addr in ports.values():
        assert _get(addr, "/any/path?x=1") == 200
        assert _accepts(addr)
    nomad_http.delete(f"/v1/job/{job_id}")
    wait_for(lambda: all(a["ClientStatus"] == "complete" for a in allocs(nomad_http, job_id)))
    assert not any(_accepts(addr) for addr in ports.values())


def test_task_level_ports_are_served_too(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id)
    job["TaskGroups"][0]["Tasks"][0]["Resources"]["Networks"] = [
        {"DynamicPorts": [{"Label": "legacy"}]}
    ]
    register(nomad_http, job)
    assert _get(_ports(nomad_http, job_id)["legacy"]) == 200


def test_config_ports_choose_the_task_that_serves(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id, ports=("core", "hmi"))
    tasks = job["TaskGroups"][0]["Tasks"]
    tasks[0]["Config"]["ports"] = ["core"]
    tasks.append({**tasks[0], "Name": "hmi", "Config": {"image": "hmi:1", "ports": ["hmi"]}})
    tasks[0]["Config"]["devstack_unhealthy"] = True
    register(nomad_http, job)
    ports = _ports(nomad_http, job_id)
    assert _get(ports["core"]) == 500
    assert _get(ports["hmi"]) == 200


@pytest.mark.parametrize(
    ("config", "http_status", "tcp"),
    [
        ({"devstack_unhealthy": True}, 500, True),
        ({"devstack_http_status": 503}, 503, True),
        ({"devstack_unhealthy": "refuse"}, None, False),
    ],
)
def test_unhealthy_conventions(
    nomad_http: httpx.Client,
    job_id: str,
    config: dict[str, Any],
    http_status: int | None,
    tcp: bool,
) -> None:
    register(nomad_http, docker_job(job_id, ports=("http",), config=config))
    addr = _ports(nomad_http, job_id)["http"]
    assert _get(addr) == http_status
    assert _accepts(addr) is tcp


def test_slow_start_opens_ports_later(nomad_http: httpx.Client, job_id: str) -> None:
    register(
        nomad_http, docker_job(job_id, ports=("http",), config={"devstack_listen_delay": "1s"})
    )
    addr = _ports(nomad_http, job_id)["http"]
    assert _get(addr) is None
    wait_for(lambda: _get(addr) == 200, timeout=10)


def test_a_crashing_container_closes_its_ports(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id, ports=("http",), config={"devstack_exit_after": "1s"})
    job["TaskGroups"][0]["RestartPolicy"] = {"Attempts": 0, "Mode": "fail"}
    register(nomad_http, job)
    addr = _ports(nomad_http, job_id)["http"]
    assert _get(addr) == 200
    wait_for(lambda: any(a["ClientStatus"] == "failed" for a in allocs(nomad_http, job_id)))
    assert not _accepts(addr)


def test_node_meta_makes_every_container_on_it_unhealthy(nomad_server: EmbeddedNomad) -> None:
    node = nomad_server.add_node(name="sick", meta={"devstack_unhealthy": "true"})
    with httpx.Client(base_url=nomad_server.url, timeout=10) as http:
        job = docker_job(
            "on-sick",
            ports=("http",),
            constraints=[{"LTarget": "${node.unique.id}", "RTarget": node, "Operand": "="}],
        )
        register(http, job)
        assert _get(_ports(http, "on-sick")["http"]) == 500


@pytest.fixture
def consul(consul_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=consul_server.url, timeout=10) as client:
        yield client


@pytest.mark.integration
def test_consul_runs_real_checks_against_simulated_containers(
    nomad_with_consul: EmbeddedNomad, consul: httpx.Client
) -> None:
    check_http = {"Type": "http", "Path": "/health", "Interval": SECOND, "Timeout": SECOND}
    check_tcp = {"Type": "tcp", "Interval": SECOND, "Timeout": SECOND}
    with httpx.Client(base_url=nomad_with_consul.url, timeout=10) as nomad:
        for name, config in (("good", {}), ("bad", {"devstack_unhealthy": True})):
            services = [
                {"Name": f"{name}-http", "PortLabel": "http", "Checks": [check_http]},
                {"Name": f"{name}-tcp", "PortLabel": "tcp", "Checks": [check_tcp]},
            ]
            register(
                nomad,
                docker_job(name, ports=("http", "tcp"), config=config, services=services),
            )

        def status(service: str) -> str | None:
            entries = consul.get(f"/v1/health/checks/{service}").json()
            return entries[0]["Status"] if entries else None

        wait_for(lambda: status("good-http") == "passing", timeout=15)
        wait_for(lambda: status("good-tcp") == "passing", timeout=15)
        wait_for(lambda: status("bad-http") == "critical", timeout=15)
        wait_for(lambda: status("bad-tcp") == "passing", timeout=15)
        passing = consul.get("/v1/health/service/good-http", params={"passing": ""}).json()
        assert len(passing) == 1
        assert passing[0]["Service"]["Port"] > 0
