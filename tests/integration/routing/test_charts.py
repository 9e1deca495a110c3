"""The routing controllers' deployment material: one Nomad job and one ACL policy each.

Each job file is parsed by the embedded Nomad's ``/v1/jobs/parse`` (HCL2, Nomad's jobspec
rules), so a typo or an unknown block fails here, and the job is checked for what running a
leader-elected controller safely takes: two replicas on distinct hosts, a readiness check,
``reconciler run <name>``, the Consul token from a Nomad variable, and only environment
variables the controller really reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from controllers.settings import env_table
from reconciler.registry import discover

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]
CONTROLLERS = ("allocations", "haproxy-kv", "elb")
FRAMEWORK_ENV = {
    "CONSUL_HTTP_ADDR",
    "RECONCILER_METRICS_ADDR",
    "RECONCILER_IDENTITY",
    "RECONCILER_LOG_FORMAT",
}
REQUIRED_ENV = {
    "allocations": set(),
    "haproxy-kv": {
        "DOMAIN_NAME",
        "HAPROXY_HTTP_LISTEN",
        "TCP_PORT_RANGE_START",
        "TCP_PORT_RANGE_END",
    },
    "elb": {"ELB_MANTICORE_NAME", "AWS_REGION", "HAPROXY_HTTP_LISTEN", "TCP_PORT_RANGE_START"},
}


# What `nomad job run -var ...` would be given.
VALUES: dict[str, Any] = {
    "image": "registry.example/manticore-reconciler:0.1.0",
    "domain_name": "manticore.example.com",
    "load_balancers": "manticore-a,manticore-b",
    "aws_region": "eu-west-1",
}


def var_file(values: dict[str, Any]) -> str:
    """``VALUES`` as the var-file text the parse API takes (what ``-var`` flags become)."""
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items())


def parsed(nomad_server: Any, name: str) -> dict[str, Any]:
    text = (ROOT / "charts" / f"{name}.nomad.hcl").read_text()
    reply = httpx.post(
        f"{nomad_server.url}/v1/jobs/parse",
        json={"JobHCL": text, "Variables": var_file(VALUES), "Canonicalize": False},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    job: dict[str, Any] = reply.json()
    assert "var." not in json.dumps(job)
    return job


@pytest.mark.parametrize("name", CONTROLLERS)
def test_each_controller_has_a_nomad_job_and_a_policy(nomad_server: Any, name: str) -> None:
    assert name in discover(()), "the job runs a registered controller"
    assert (ROOT / "charts" / "policies" / f"{name}.hcl").is_file()
    job = parsed(nomad_server, name)
    assert job["ID"] == f"manticore-{name}"
    (group,) = job["TaskGroups"]
    assert group["Count"] == 2
    assert {"LTarget": "", "RTarget": "true", "Operand": "distinct_hosts"}.items() <= (
        group["Constraints"][0].items()
    )
    (service,) = group["Services"]
    (check,) = service["Checks"]
    assert (check["Type"], check["Path"]) == ("http", "/readyz")
    (task,) = group["Tasks"]
    assert task["Config"]["command"] == "reconciler"
    assert task["Config"]["args"] == ["run", name]
    assert task["KillSignal"] == "SIGTERM"
    (template,) = task["Templates"]
    assert template["Envvars"] is True
    assert template["DestPath"].startswith("secrets/")
    assert "CONSUL_HTTP_TOKEN" in template["EmbeddedTmpl"]
    assert f'nomadVar "nomad/jobs/manticore-{name}"' in template["EmbeddedTmpl"]
    env = set(task["Env"])
    known = {row[0] for row in env_table()} | FRAMEWORK_ENV
    assert env <= known, f"unknown variables {sorted(env - known)}"
    assert REQUIRED_ENV[name] <= env
    assert "CONSUL_HTTP_TOKEN" not in env  # the secret only comes from the variable


@pytest.mark.parametrize("name", CONTROLLERS)
def test_each_job_is_accepted_and_placed_on_two_hosts(nomad_with_consul: Any, name: str) -> None:
    # Consul services need nodes with Consul: Nomad adds that constraint itself.
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
