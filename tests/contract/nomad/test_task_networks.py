"""Task-level networks (``resources { network { port ... } }``, docker ``port_map``).

Many job files and generators still declare ports on the task; Nomad assigns them per task
(``AllocatedResources.Tasks[task].Networks`` and the legacy ``TaskResources``/``Resources``
views), exposes them in the task's environment and registers services on them.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.nomad import EmbeddedNomad
from devstack.nomad.client.taskenv import task_network_env
from devstack.nomad.testing import requires_embedded_nomad

from .helpers import allocs, docker_job, python_task, raw_exec_job, register, wait_for

pytestmark = pytest.mark.contract


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _task_network_job(job_id: str, static: int, **task: Any) -> dict[str, Any]:
    job = docker_job(job_id)
    main = job["TaskGroups"][0]["Tasks"][0]
    main["Resources"]["Networks"] = [
        {
            "DynamicPorts": [{"Label": "http"}, {"Label": "admin"}],
            "ReservedPorts": [{"Label": "fixed", "Value": static}],
        }
    ]
    main["Config"]["port_map"] = [{"http": 8080}]
    main.update(task)
    return job


def _full_alloc(http: httpx.Client, job_id: str) -> dict[str, Any]:
    stub = wait_for(lambda: next(iter(allocs(http, job_id)), None))
    return dict(http.get(f"/v1/allocation/{stub['ID']}").json())


def test_task_network_ports_are_assigned_in_every_view(
    nomad_http: httpx.Client, job_id: str
) -> None:
    static = _free_port()
    register(nomad_http, _task_network_job(job_id, static))
    alloc = _full_alloc(nomad_http, job_id)
    nets = alloc["AllocatedResources"]["Tasks"]["main"]["Networks"]
    assert len(nets) == 1
    net = nets[0]
    dynamic = {p["Label"]: p["Value"] for p in net["DynamicPorts"]}
    assert set(dynamic) == {"http", "admin"}
    assert all(20000 <= v <= 32000 for v in dynamic.values())
    assert dynamic["http"] != dynamic["admin"]
    assert [(p["Label"], p["Value"]) for p in net["ReservedPorts"]] == [("fixed", static)]
    assert net["IP"]
    # The legacy views Nomad still returns carry the same offer.
    legacy = alloc["TaskResources"]["main"]["Networks"]
    assert {p["Label"]: p["Value"] for p in legacy[0]["DynamicPorts"]} == dynamic
    combined = [p for n in alloc["Resources"]["Networks"] for p in n.get("DynamicPorts") or []]
    assert {p["Label"]: p["Value"] for p in combined} == dynamic
    # Group-level ports stay empty: these belong to the task.
    assert not alloc["AllocatedResources"]["Shared"].get("Ports")


def test_two_allocations_never_share_a_task_port(nomad_http: httpx.Client, job_id: str) -> None:
    job = _task_network_job(job_id, _free_port())
    del job["TaskGroups"][0]["Tasks"][0]["Resources"]["Networks"][0]["ReservedPorts"]
    job["TaskGroups"][0]["Count"] = 4
    register(nomad_http, job)
    stubs = wait_for(lambda: (a := allocs(nomad_http, job_id)) and len(a) == 4 and a)
    seen: list[tuple[str, int]] = []
    for stub in stubs:
        full = nomad_http.get(f"/v1/allocation/{stub['ID']}").json()
        for net in full["AllocatedResources"]["Tasks"]["main"]["Networks"]:
            seen += [(net["IP"], p["Value"]) for p in net["DynamicPorts"]]
    assert len(seen) == 8
    assert len(set(seen)) == 8


ENV_DUMP = (
    "import json, os; json.dump({k: v for k, v in os.environ.items() if k.startswith('NOMAD_')}, "
    "open(os.path.join(os.environ['NOMAD_TASK_DIR'], 'env.json'), 'w')); "
    "import time; time.sleep(60)"
)


def test_task_network_environment(nomad_http: httpx.Client, job_id: str) -> None:
    core = python_task("core", "import time; time.sleep(60)")
    core["Resources"]["Networks"] = [{"DynamicPorts": [{"Label": "broker"}]}]
    hmi = python_task("hmi", ENV_DUMP)
    hmi["Resources"]["Networks"] = [{"DynamicPorts": [{"Label": "ui"}]}]
    register(nomad_http, raw_exec_job(job_id, [core, hmi]))
    alloc = _full_alloc(nomad_http, job_id)
    tasks = alloc["AllocatedResources"]["Tasks"]
    ui = tasks["hmi"]["Networks"][0]["DynamicPorts"][0]["Value"]
    broker = tasks["core"]["Networks"][0]["DynamicPorts"][0]["Value"]
    ip = tasks["hmi"]["Networks"][0]["IP"]

    def env_file() -> Path | None:
        for root, _dirs, files in os.walk("/tmp"):
            if "env.json" in files and alloc["ID"] in root:
                return Path(root) / "env.json"
        return None

    path = wait_for(env_file, timeout=15)
    env = wait_for(lambda: path.read_text() and json.loads(path.read_text()))
    assert env["NOMAD_PORT_ui"] == str(ui)
    assert env["NOMAD_HOST_PORT_ui"] == str(ui)
    assert env["NOMAD_IP_ui"] == ip
    assert env["NOMAD_ADDR_ui"] == f"{ip}:{ui}"
    # The other task's ports, named by task and label.
    assert env["NOMAD_ADDR_core_broker"] == f"{ip}:{broker}"
    assert env["NOMAD_PORT_core_broker"] == str(broker)
    assert env["NOMAD_IP_core_broker"] == ip
    assert "NOMAD_PORT_broker" not in env


def test_docker_port_map_sets_the_container_port() -> None:
    alloc = {
        "AllocatedResources": {
            "Tasks": {
                "web": {
                    "Networks": [
                        {"IP": "10.0.0.5", "DynamicPorts": [{"Label": "http", "Value": 23456}]}
                    ]
                }
            }
        }
    }
    task = {"Name": "web", "Driver": "docker", "Config": {"port_map": [{"http": 8080}]}}
    env = task_network_env(alloc, task)
    assert env["NOMAD_PORT_http"] == "8080"
    assert env["NOMAD_HOST_PORT_http"] == "23456"
    assert env["NOMAD_ADDR_http"] == "10.0.0.5:23456"
    assert task_network_env(alloc, {**task, "Driver": "raw_exec"})["NOMAD_PORT_http"] == "23456"


def test_task_service_naming_an_unknown_port_is_a_validation_error(
    nomad_http: httpx.Client, job_id: str
) -> None:
    job = _task_network_job(job_id, _free_port(), Services=[{"Name": "web", "PortLabel": "nope"}])
    resp = nomad_http.post("/v1/jobs", json={"Job": job})
    assert resp.status_code == 500
    assert "Task main validation failed" in resp.text
    assert 'port label "nope" referenced by services web does not exist' in resp.text


@requires_embedded_nomad
@pytest.mark.integration
def test_task_service_registers_on_the_task_port(
    nomad_with_consul: EmbeddedNomad, consul_server: Any
) -> None:
    with (
        httpx.Client(base_url=nomad_with_consul.url, timeout=10) as nomad,
        httpx.Client(base_url=consul_server.url, timeout=10) as consul,
    ):
        job = _task_network_job(
            "legacy", _free_port(), Services=[{"Name": "legacy-web", "PortLabel": "http"}]
        )
        register(nomad, job)
        alloc = _full_alloc(nomad, "legacy")
        net = alloc["AllocatedResources"]["Tasks"]["main"]["Networks"][0]
        http_port = next(p["Value"] for p in net["DynamicPorts"] if p["Label"] == "http")
        entries = wait_for(lambda: consul.get("/v1/catalog/service/legacy-web").json())
        assert [(e["ServiceAddress"], e["ServicePort"]) for e in entries] == [
            (net["IP"], http_port)
        ]
        assert entries[0]["ServiceID"] == f"_nomad-task-{alloc['ID']}-main-legacy-web-http"


@requires_embedded_nomad
def test_group_service_on_a_task_port_fails_the_allocation(
    nomad_http: httpx.Client, job_id: str
) -> None:
    # Group services resolve against group ports only: the client's group_services hook fails.
    job = _task_network_job(job_id, _free_port())
    job["TaskGroups"][0]["Services"] = [{"Name": "grp", "PortLabel": "http", "Provider": "nomad"}]
    job["TaskGroups"][0]["ReschedulePolicy"] = {"Attempts": 0, "Unlimited": False}
    register(nomad_http, job)
    failed = wait_for(
        lambda: next((a for a in allocs(nomad_http, job_id) if a["ClientStatus"] == "failed"), None)
    )
    events = failed["TaskStates"]["main"]["Events"]
    setup = next(e for e in events if e["Type"] == "Setup Failure")
    assert setup["DisplayMessage"] == (
        'failed to setup alloc: pre-run hook "group_services" failed: unable to get address '
        'for service "grp": invalid port "http": port label not found'
    )
    assert nomad_http.get(f"/v1/job/{job_id}/services").json() == []
