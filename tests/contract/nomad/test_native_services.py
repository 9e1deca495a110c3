"""Nomad's own service discovery (``provider = "nomad"``): ``/v1/service/<name>``."""

from __future__ import annotations

import httpx
import pytest

from .helpers import docker_job, register, running_allocs, wait_for

pytestmark = pytest.mark.contract

MALFORMED = "Parameter for choose must be in form '<number>|<key>'"


def test_choose_returns_a_stable_subset(nomad_http: httpx.Client, job_id: str) -> None:
    name = f"{job_id}-web"
    job = docker_job(
        job_id,
        count=3,
        ports=("http",),
        services=[{"Name": name, "PortLabel": "http", "Provider": "nomad"}],
    )
    register(nomad_http, job)
    wait_for(lambda: running_allocs(nomad_http, job_id, 3))
    every = wait_for(lambda: len(r := nomad_http.get(f"/v1/service/{name}").json()) == 3 and r)
    chosen = nomad_http.get(f"/v1/service/{name}", params={"choose": "2|alloc-a"}).json()
    assert len(chosen) == 2
    assert {r["ID"] for r in chosen} <= {r["ID"] for r in every}
    again = nomad_http.get(f"/v1/service/{name}", params={"choose": "2|alloc-a"}).json()
    assert [r["ID"] for r in again] == [r["ID"] for r in chosen]
    more = nomad_http.get(f"/v1/service/{name}", params={"choose": "9|alloc-a"}).json()
    assert len(more) == 3
    for bad in ("2|", "|key", "x|key", "2"):
        resp = nomad_http.get(f"/v1/service/{name}", params={"choose": bad})
        assert resp.status_code == 500, bad
        assert resp.text == MALFORMED
