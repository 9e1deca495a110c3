"""The waitlist's and the jobs controller's deployment material: a Nomad job and Consul and
Nomad ACL policies each, parsed and planned on the embedded Nomad like the routing charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from controllers.settings import env_table
from reconciler.registry import discover
from tests.integration.routing.test_charts import FRAMEWORK_ENV, parsed

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CONTROLLERS = ("waitlist", "jobs")
NOMAD_ENV = {"NOMAD_ADDR"}
REQUIRED_ENV = {
    "waitlist": {"MAX_USERS", "MANTICORE_DATACENTERS", "MANTICORE_JOB_TEMPLATE"},
    "jobs": {"DOMAIN_NAME", "MANTICORE_DATACENTERS", "MANTICORE_JOB_TEMPLATE"},
}


@pytest.mark.parametrize("name", CONTROLLERS)
def test_each_controller_has_a_job_and_consul_and_nomad_policies(
    nomad_server: Any, name: str
) -> None:
    assert name in discover(()), "the job runs a registered controller"
    assert (ROOT / "charts" / "policies" / f"{name}.hcl").is_file()
    assert (ROOT / "charts" / "policies" / f"{name}-nomad.hcl").is_file()
    job = parsed(nomad_server, name)
    assert job["ID"] == f"manticore-{name}"
    (group,) = job["TaskGroups"]
    assert group["Count"] == 2
    assert group["Constraints"][0]["Operand"] == "distinct_hosts"
    (service,) = group["Services"]
    (check,) = service["Checks"]
    assert (check["Type"], check["Path"]) == ("http", "/readyz")
    (task,) = group["Tasks"]
    assert task["Config"]["args"] == ["run", name]
    assert task["KillSignal"] == "SIGTERM"
    (template,) = task["Templates"]
    assert template["Envvars"] is True
    assert template["DestPath"].startswith("secrets/")
    for secret in ("CONSUL_HTTP_TOKEN", "NOMAD_TOKEN"):
        assert secret in template["EmbeddedTmpl"]
        assert secret not in task["Env"]
    assert f'nomadVar "nomad/jobs/manticore-{name}"' in template["EmbeddedTmpl"]
    env = set(task["Env"])
    known = {row[0] for row in env_table()} | FRAMEWORK_ENV | NOMAD_ENV
    assert env <= known, f"unknown variables {sorted(env - known)}"
    assert REQUIRED_ENV[name] <= env


@pytest.mark.parametrize("name", CONTROLLERS)
def test_each_job_is_placed_on_two_hosts(nomad_with_consul: Any, name: str) -> None:
    job = parsed(nomad_with_consul, name)
    reply = httpx.post(
        f"{nomad_with_consul.url}/v1/job/{job['ID']}/plan",
        json={"Job": job, "Diff": False},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    plan = reply.json()
    assert not plan.get("FailedTGAllocs"), plan.get("FailedTGAllocs")
    (updates,) = plan["Annotations"]["DesiredTGUpdates"].values()
    assert updates["Place"] == 2
