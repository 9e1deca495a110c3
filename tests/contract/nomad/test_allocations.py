"""Allocation lifecycle, task states, drivers (simulated docker, real raw_exec), restarts, stop."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.nomad.testing import requires_embedded_nomad

from .helpers import SECOND, allocs, docker_job, python_task, raw_exec_job, register, wait_for

pytestmark = [pytest.mark.contract, requires_embedded_nomad]

FAST_RESTART = {"Attempts": 1, "Interval": 60 * SECOND, "Delay": SECOND // 20, "Mode": "fail"}


def _one_alloc(http: httpx.Client, job_id: str, status: str) -> dict[str, Any]:
    stub = wait_for(
        lambda: next((a for a in allocs(http, job_id) if a["ClientStatus"] == status), None)
    )
    return dict(http.get(f"/v1/allocation/{stub['ID']}").json())


def test_lifecycle_pending_running_complete(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id, config={"devstack_start_delay": "300ms"}))
    pending = _one_alloc(nomad_http, job_id, "pending")
    assert pending["ClientDescription"] in ("", "No tasks have started")
    assert pending["DesiredStatus"] == "run"
    running = _one_alloc(nomad_http, job_id, "running")
    assert running["ClientDescription"] == "Tasks are running"
    state = running["TaskStates"]["main"]
    assert state["State"] == "running"
    assert state["Failed"] is False
    assert [e["Type"] for e in state["Events"]][:2] == ["Received", "Task Setup"]
    assert state["Events"][-1]["Type"] == "Started"
    assert isinstance(state["Events"][-1]["Time"], int)
    assert nomad_http.get(f"/v1/job/{job_id}").json()["Status"] == "running"
    stop = nomad_http.post(f"/v1/allocation/{running['ID']}/stop")
    assert stop.status_code == 200
    assert stop.json()["EvalID"]
    done = wait_for(
        lambda: (
            (a := nomad_http.get(f"/v1/allocation/{running['ID']}").json())["ClientStatus"]
            == "complete"
            and a
        )
    )
    assert done["DesiredStatus"] == "stop"
    assert done["ClientDescription"] == "All tasks have completed"
    types = [e["Type"] for e in done["TaskStates"]["main"]["Events"]]
    assert types[-2:] == ["Killing", "Killed"]
    # A stopped service allocation is replaced.
    wait_for(
        lambda: [
            a
            for a in allocs(nomad_http, job_id)
            if a["ClientStatus"] == "running" and a["ID"] != running["ID"]
        ]
    )


def test_allocation_list_resources_and_prefix(nomad_http: httpx.Client, job_id: str) -> None:
    register(nomad_http, docker_job(job_id, ports=("http",)))
    alloc = _one_alloc(nomad_http, job_id, "running")
    plain = nomad_http.get("/v1/allocations", params={"prefix": alloc["ID"][:8]}).json()
    assert [a["ID"] for a in plain] == [alloc["ID"]]
    assert "AllocatedResources" not in plain[0]
    for key in (
        "EvalID",
        "Name",
        "Namespace",
        "NodeID",
        "NodeName",
        "JobID",
        "JobType",
        "JobVersion",
        "TaskGroup",
        "DesiredStatus",
        "ClientStatus",
        "TaskStates",
        "CreateIndex",
        "ModifyIndex",
        "CreateTime",
        "ModifyTime",
    ):
        assert key in plain[0]
    with_res = nomad_http.get(
        "/v1/allocations", params={"prefix": alloc["ID"][:8], "resources": "true"}
    ).json()
    ports = with_res[0]["AllocatedResources"]["Shared"]["Ports"]
    assert ports[0]["Label"] == "http"
    assert ports[0]["HostIP"] == "127.0.0.1"
    job_stubs = nomad_http.get(f"/v1/job/{job_id}/allocations").json()
    assert "AllocatedResources" not in job_stubs[0]
    assert nomad_http.get("/v1/allocation/00000000-0000-0000-0000-000000000000").text == (
        "alloc not found"
    )


def test_docker_start_failure_restarts_then_fails(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id, config={"image": "devstack/fail-pull"})
    job["TaskGroups"][0]["RestartPolicy"] = FAST_RESTART
    job["TaskGroups"][0]["ReschedulePolicy"] = {"Attempts": 0, "Unlimited": False}
    register(nomad_http, job)
    failed = _one_alloc(nomad_http, job_id, "failed")
    assert failed["ClientDescription"] == "Failed tasks"
    state = failed["TaskStates"]["main"]
    assert state["State"] == "dead"
    assert state["Failed"] is True
    assert state["Restarts"] == 1
    types = [e["Type"] for e in state["Events"]]
    assert "Driver Failure" in types
    assert "Restarting" in types
    assert types[-1] == "Not Restarting"
    assert 'mode is "fail"' in state["Events"][-1]["DisplayMessage"]
    summary = nomad_http.get(f"/v1/job/{job_id}/summary").json()["Summary"]["app"]
    assert summary["Failed"] == 1


def test_failed_allocation_is_rescheduled_by_policy(nomad_http: httpx.Client, job_id: str) -> None:
    job = docker_job(job_id, config={"image": "devstack/exit:3"})
    job["TaskGroups"][0]["RestartPolicy"] = {**FAST_RESTART, "Attempts": 0}
    job["TaskGroups"][0]["ReschedulePolicy"] = {
        "Attempts": 1,
        "Interval": 3600 * SECOND,
        "Delay": SECOND // 5,
        "DelayFunction": "constant",
        "Unlimited": False,
    }
    register(nomad_http, job)
    first = _one_alloc(nomad_http, job_id, "failed")
    second = wait_for(
        lambda: next((a for a in allocs(nomad_http, job_id) if a["ID"] != first["ID"]), None)
    )
    full = nomad_http.get(f"/v1/allocation/{second['ID']}").json()
    assert full["PreviousAllocation"] == first["ID"]
    assert full["RescheduleTracker"]["Events"][0]["PrevAllocID"] == first["ID"]
    terminated = [e for e in first["TaskStates"]["main"]["Events"] if e["Type"] == "Terminated"]
    assert terminated[0]["ExitCode"] == 3
    assert terminated[0]["DisplayMessage"] == "Exit Code: 3"
    # One reschedule attempt only: the second failure is final.
    wait_for(
        lambda: nomad_http.get(f"/v1/allocation/{second['ID']}").json()["ClientStatus"] == "failed"
    )
    wait_for(lambda: nomad_http.get(f"/v1/job/{job_id}").json()["Status"] == "dead")
    assert len(allocs(nomad_http, job_id)) == 2


def test_batch_job_completes(nomad_http: httpx.Client, job_id: str) -> None:
    job = raw_exec_job(job_id, [python_task("once", "print('done')")])
    job["Type"] = "batch"
    register(nomad_http, job)
    done = _one_alloc(nomad_http, job_id, "complete")
    assert done["TaskStates"]["once"]["Failed"] is False
    wait_for(lambda: nomad_http.get(f"/v1/job/{job_id}").json()["Status"] == "dead")
    assert len(allocs(nomad_http, job_id)) == 1


ENV_DUMP = (
    "import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
    "if k.startswith('NOMAD_') or k in ('GREETING',)} | {'argv': sys.argv[1:]}, "
    "open(os.path.join(os.environ['NOMAD_TASK_DIR'], 'env.json'), 'w')); "
    "import time; time.sleep(60)"
)


def test_raw_exec_environment_and_interpolation(nomad_http: httpx.Client, job_id: str) -> None:
    core = python_task("core", "import time; time.sleep(60)")
    hmi = python_task("hmi", ENV_DUMP, Env={"GREETING": "core at ${NOMAD_ADDR_core}"})
    hmi["Config"]["args"] += ["${NOMAD_PORT_core}", "${node.datacenter}", "${meta.role}"]
    job = raw_exec_job(
        job_id,
        [core, hmi],
        Networks=[{"DynamicPorts": [{"Label": "core"}, {"Label": "hmi", "To": -1}]}],
        Meta={"role": "pair"},
    )
    register(nomad_http, job)
    alloc = _one_alloc(nomad_http, job_id, "running")
    task_dir = None

    def env_file() -> Path | None:
        nonlocal task_dir
        for root, _dirs, files in os.walk("/tmp"):
            if "env.json" in files and alloc["ID"] in root:
                return Path(root) / "env.json"
        return None

    path = wait_for(env_file, timeout=10)
    env = wait_for(lambda: path.read_text() and json.loads(path.read_text()))
    ports = {p["Label"]: p for p in alloc["AllocatedResources"]["Shared"]["Ports"]}
    core_port = ports["core"]["Value"]
    assert env["NOMAD_ALLOC_ID"] == alloc["ID"]
    assert env["NOMAD_ALLOC_NAME"] == f"{job_id}.app[0]"
    assert env["NOMAD_ALLOC_INDEX"] == "0"
    assert env["NOMAD_JOB_NAME"] == job_id
    assert env["NOMAD_GROUP_NAME"] == "app"
    assert env["NOMAD_TASK_NAME"] == "hmi"
    assert env["NOMAD_DC"] == "dc1"
    assert env["NOMAD_REGION"] == "global"
    assert env["NOMAD_IP_core"] == "127.0.0.1"
    assert env["NOMAD_PORT_core"] == str(core_port)
    assert env["NOMAD_HOST_PORT_core"] == str(core_port)
    assert env["NOMAD_ADDR_core"] == f"127.0.0.1:{core_port}"
    assert env["NOMAD_PORT_hmi"] == str(ports["hmi"]["Value"]) == str(ports["hmi"]["To"])
    assert env["NOMAD_META_role"] == "pair"
    assert env["NOMAD_ALLOC_DIR"].endswith(os.path.join(alloc["ID"], "alloc"))
    assert env["NOMAD_TASK_DIR"] == str(path.parent)
    assert env["GREETING"] == f"core at 127.0.0.1:{core_port}"
    assert env["argv"] == [str(core_port), "dc1", "${meta.role}"]


def test_raw_exec_restart_policy_and_exit_codes(nomad_http: httpx.Client, job_id: str) -> None:
    task = python_task("flaky", "import sys; sys.exit(7)")
    job = raw_exec_job(
        job_id,
        [task],
        RestartPolicy={**FAST_RESTART, "Attempts": 2},
        ReschedulePolicy={"Attempts": 0, "Unlimited": False},
    )
    register(nomad_http, job)
    failed = _one_alloc(nomad_http, job_id, "failed")
    state = failed["TaskStates"]["flaky"]
    assert state["Restarts"] == 2
    codes = [e["ExitCode"] for e in state["Events"] if e["Type"] == "Terminated"]
    assert codes
    assert set(codes) == {7}
    assert state["Events"][-1]["Type"] == "Not Restarting"


def test_raw_exec_stop_kills_the_process_group(
    nomad_http: httpx.Client, job_id: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}'); time.sleep(120)"
    )
    register(nomad_http, raw_exec_job(job_id, [python_task("tree", code, KillTimeout=SECOND)]))
    _one_alloc(nomad_http, job_id, "running")
    parent, child = (int(p) for p in wait_for(lambda: pids.exists() and pids.read_text()).split())
    nomad_http.delete(f"/v1/job/{job_id}")
    wait_for(lambda: all(a["ClientStatus"] == "complete" for a in allocs(nomad_http, job_id)))

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie child of a dead parent may linger until reaped by init.
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(lambda: gone(parent) and gone(child), timeout=5)
    assert signal.SIGTERM  # the task received SIGTERM first (KillSignal default)


def test_sibling_failure_kills_the_group(nomad_http: httpx.Client, job_id: str) -> None:
    job = raw_exec_job(
        job_id,
        [
            python_task("crash", "import sys; sys.exit(1)"),
            python_task("steady", "import time; time.sleep(60)"),
        ],
        RestartPolicy={**FAST_RESTART, "Attempts": 0},
        ReschedulePolicy={"Attempts": 0, "Unlimited": False},
    )
    register(nomad_http, job)
    failed = _one_alloc(nomad_http, job_id, "failed")
    steady = wait_for(
        lambda: (
            (s := nomad_http.get(f"/v1/allocation/{failed['ID']}").json()["TaskStates"]["steady"])[
                "State"
            ]
            == "dead"
            and s
        )
    )
    assert steady["Failed"] is False
    assert "Sibling Task Failed" in [e["Type"] for e in steady["Events"]]
