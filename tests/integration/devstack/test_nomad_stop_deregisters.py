"""Regression: stopping an allocation whose deployment health tracker runs removes its group
services from Consul at once.

The tracker was cancelled just as the dying tasks woke it; ``asyncio.wait_for`` (Python 3.11)
swallowed that cancellation, the tracker ran on until ``healthy_deadline`` (5 minutes), and the
allocation runner waited for it before deregistering the group services: a departed user's
services stayed in Consul, critical, for minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from controllers.templates import JobTemplate, TemplateValues
from devstack.fakes import RAW_EXEC_TEMPLATE

pytestmark = [pytest.mark.integration]


def test_purging_a_job_removes_its_group_services_at_once(consul_server, nomad_with_consul):
    python = {"python": sys.executable}
    template = JobTemplate.load(Path(RAW_EXEC_TEMPLATE), variables=python)
    job = template.render(
        TemplateValues("ada", "8.2.0", "default", "generic", "master", "m.test", ("dc1",), python)
    )
    with (
        httpx.Client(base_url=nomad_with_consul.url) as nomad,
        httpx.Client(base_url=consul_server.url) as consul,
    ):
        nomad.post("/v1/jobs", json=job if "Job" in job else {"Job": job}).raise_for_status()
        deadline = time.monotonic() + 60
        while not consul.get("/v1/health/service/core-hmi-ada-hmi", params={"passing": "1"}).json():
            assert time.monotonic() < deadline, "the HMI never turned passing"
            time.sleep(0.1)
        nomad.delete("/v1/job/core-hmi-ada", params={"purge": "true"}).raise_for_status()
        deadline = time.monotonic() + 10
        while left := [s for s in consul.get("/v1/catalog/services").json() if "ada" in s]:
            assert time.monotonic() < deadline, f"still registered: {left}"
            time.sleep(0.1)
