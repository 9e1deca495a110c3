"""Job builders and polling helpers shared by the Nomad contract tests."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
SECOND = 1_000_000_000


def docker_job(
    job_id: str,
    *,
    count: int = 1,
    cpu: int = 100,
    memory: int = 64,
    ports: tuple[str, ...] = (),
    static: dict[str, int] | None = None,
    config: dict[str, Any] | None = None,
    constraints: list[dict[str, Any]] | None = None,
    group_constraints: list[dict[str, Any]] | None = None,
    services: list[dict[str, Any]] | None = None,
    **job: Any,
) -> dict[str, Any]:
    network: dict[str, Any] = {"Mode": "host"}
    if ports:
        network["DynamicPorts"] = [{"Label": p} for p in ports]
    if static:
        network["ReservedPorts"] = [{"Label": k, "Value": v} for k, v in static.items()]
    group: dict[str, Any] = {
        "Name": "app",
        "Count": count,
        "Tasks": [
            {
                "Name": "main",
                "Driver": "docker",
                "Config": {"image": "nginx:1.27", **(config or {})},
                "Resources": {"CPU": cpu, "MemoryMB": memory},
            }
        ],
        "EphemeralDisk": {"SizeMB": 10},
    }
    if ports or static:
        group["Networks"] = [network]
    if group_constraints:
        group["Constraints"] = group_constraints
    if services:
        group["Services"] = services
    spec: dict[str, Any] = {"ID": job_id, "Datacenters": ["dc1"], "TaskGroups": [group], **job}
    if constraints:
        spec["Constraints"] = constraints
    return spec


def quick_health(job: dict[str, Any], migrate_min_healthy: float = 0.5) -> dict[str, Any]:
    """Health known in half a second: the deployment's (``update``) and a migration's."""
    for group in job["TaskGroups"]:
        group["Update"] = {
            "MaxParallel": 1,
            "HealthCheck": "task_states",
            "MinHealthyTime": SECOND // 2,
            "HealthyDeadline": 30 * SECOND,
            "ProgressDeadline": 60 * SECOND,
        }
        group["Migrate"] = {
            "MaxParallel": 1,
            "HealthCheck": "task_states",
            "MinHealthyTime": int(migrate_min_healthy * SECOND),
            "HealthyDeadline": 60 * SECOND,
        }
    return job


def python_task(name: str, code: str, **extra: Any) -> dict[str, Any]:
    """A raw_exec task running ``code`` with the test's Python."""
    return {
        "Name": name,
        "Driver": "raw_exec",
        "Config": {"command": sys.executable, "args": ["-c", code]},
        "Resources": {"CPU": 100, "MemoryMB": 64},
        **extra,
    }


def raw_exec_job(job_id: str, tasks: list[dict[str, Any]], **group: Any) -> dict[str, Any]:
    return {
        "ID": job_id,
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {"Name": "app", "Count": 1, "Tasks": tasks, "EphemeralDisk": {"SizeMB": 10}, **group}
        ],
    }


def register(http: httpx.Client, job: dict[str, Any], **options: Any) -> dict[str, Any]:
    resp = http.post("/v1/jobs", json={"Job": job, **options})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_for(fn: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def allocs(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    resp = http.get(f"/v1/job/{job_id}/allocations")
    assert resp.status_code == 200, resp.text
    return list(resp.json())


def running_allocs(http: httpx.Client, job_id: str, n: int) -> list[dict[str, Any]] | None:
    live = [a for a in allocs(http, job_id) if a["ClientStatus"] == "running"]
    return live if len(live) >= n else None


def evals(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v1/job/{job_id}/evaluations").json())
