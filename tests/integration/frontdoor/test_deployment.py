"""The intake API's and the expiry controller's deployment material, checked for real: the Nomad
jobs parse and place on the embedded Nomad, and each runs with nothing but its published Consul
ACL policy (against an ACL-enforcing Consul), which is no wider than it needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from controllers import expiry
from controllers.settings import Settings, UsageSettings, env_table
from devstack.consul import ConsulServer
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import PermissionDenied
from reconciler.controller import RunnerOptions
from reconciler.manager import Manager, ManagerOptions
from reconciler.registry import discover
from tests.integration.frontdoor.helpers import PAGE, REQ, api_settings, base_url, intake, page
from tests.integration.helpers import eventually
from tests.integration.routing.test_charts import FRAMEWORK_ENV, parsed

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]
MASTER = "root-token-for-tests"
API_ENV = {"HTTP_PORT", "MANTICORE_API_BIND_ADDRESS", "MANTICORE_API_ADVERTISE_ADDRESS"}


def test_the_api_job_runs_instances_that_register_themselves(nomad_with_consul: Any) -> None:
    job = parsed(nomad_with_consul, "manticore-api")
    assert job["ID"] == "manticore-api"
    (group,) = job["TaskGroups"]
    assert group["Count"] == 2
    (service,) = group["Services"]
    # Nomad registers the metrics service only: the web app service is the API's own.
    assert service["Name"] != "manticore-service"
    assert service["Checks"][0]["Path"] == "/readyz"
    (task,) = group["Tasks"]
    assert task["Config"]["command"] == "manticore-api"
    assert task["KillSignal"] == "SIGTERM"
    (template,) = task["Templates"]
    for secret in ("CONSUL_HTTP_TOKEN", "JWT_SECRET"):
        assert secret in template["EmbeddedTmpl"]
        assert secret not in task["Env"]
    known = {row[0] for row in env_table()} | FRAMEWORK_ENV
    assert set(task["Env"]) <= known, sorted(set(task["Env"]) - known)
    assert set(task["Env"]) >= API_ENV
    plan = httpx.post(
        f"{nomad_with_consul.url}/v1/job/manticore-api/plan",
        json={"Job": job, "Diff": False},
        timeout=10,
    ).json()
    assert not plan.get("FailedTGAllocs")


def test_the_expiry_job_runs_two_replicas(nomad_with_consul: Any) -> None:
    assert "expiry" in discover(())
    job = parsed(nomad_with_consul, "expiry")
    (group,) = job["TaskGroups"]
    assert group["Count"] == 2
    assert group["Constraints"][0]["Operand"] == "distinct_hosts"
    (task,) = group["Tasks"]
    assert task["Config"]["args"] == ["run", "expiry"]
    known = {row[0] for row in env_table()} | FRAMEWORK_ENV
    assert set(task["Env"]) <= known
    assert {"USAGE_DURATION", "WARNING_DURATION", "RESET_TIMER_ALLOWED"} <= set(task["Env"])


@pytest.fixture
def acl_consul():
    with ConsulServer(acl_master_token=MASTER, acl_default_policy="deny") as server:
        yield server


def token_for(address: str, policy: str) -> str:
    rules = (ROOT / "charts" / "policies" / f"{policy}.hcl").read_text()
    with httpx.Client(base_url=f"http://{address}", headers={"X-Consul-Token": MASTER}) as http:
        http.put("/v1/acl/policy", json={"Name": policy, "Rules": rules}).raise_for_status()
        made = http.put("/v1/acl/token", json={"Policies": [{"Name": policy}]})
        made.raise_for_status()
        return str(made.json()["SecretID"])


def config(address: str, token: str) -> ClientsConfig:
    return ClientsConfig.from_env({"CONSUL_HTTP_ADDR": address, "CONSUL_HTTP_TOKEN": token})


@pytest.mark.anyio
async def test_the_api_works_with_its_policy_and_no_more(acl_consul) -> None:
    secret = token_for(acl_consul.address, "manticore-api")
    async with ConsulClient(config(acl_consul.address, MASTER).consul) as root:
        await root.kv_put(REQ + "bob", b"{}")
        await root.kv_put(PAGE, page(waiting=["bob"]))
        await root.kv_put("haproxy/domainName", b"manticore.test")
        async with (
            intake(acl_consul.address, api_settings(), token=secret) as running,
            httpx.AsyncClient(base_url=base_url(running)) as http,
        ):
            created = await http.post("/api/v1/requests", json={"id": "ada"})
            assert created.status_code == 200, created.text
            status = await http.get("/api/v1/requests/ada")
            assert status.json()["state"] == "waiting"
            assert (await http.post("/api/v1/requests/ada/activity")).status_code == 200
            assert (await http.delete("/api/v1/requests/ada")).status_code == 204

            async def registered():
                _, found = await root.health_service("manticore-service")
                return found

            assert await eventually(registered, timeout=20)
        _, after = await root.health_service("manticore-service")
        assert after == []  # deregistered with its own token on the way out
        async with ConsulClient(config(acl_consul.address, secret).consul) as limited:
            for key in (PAGE, "haproxy/data/ada", "manticore/expiry/data/ada", "reconciler/x"):
                with pytest.raises(PermissionDenied):
                    await limited.kv_put(key, b"{}")


@pytest.mark.anyio
async def test_expiry_works_with_its_policy_and_no_more(acl_consul) -> None:
    secret = token_for(acl_consul.address, "expiry")
    # The real clock: half a second of use, half a second of warning.
    settings = Settings(
        usage=UsageSettings(usage_duration=0.5, warning_duration=0.5, recheck_interval=0.1)
    )
    manager = Manager(
        [expiry.build(settings)],
        options=ManagerOptions(metrics_port=0, runner=RunnerOptions(identity="scoped")),
        config=config(acl_consul.address, secret),
    )
    async with (
        ConsulClient(config(acl_consul.address, MASTER).consul) as root,
        anyio.create_task_group() as tg,
    ):
        await root.kv_put(REQ + "ada", b"{}")
        await root.kv_put(PAGE, page(claimed=["ada"]))
        await tg.start(manager.run)

        async def expired():
            _, entry = await root.kv_get(REQ + "ada")
            _, record = await root.kv_get("manticore/expiry/data/ada")
            return entry is None and record is None

        await eventually(expired, timeout=20)
        manager.stop()
    async with ConsulClient(config(acl_consul.address, secret).consul) as limited:
        for key in (PAGE, "haproxy/data/ada", "manticore/allocations/data/ada"):
            with pytest.raises(PermissionDenied):
                await limited.kv_put(key, json.dumps({}).encode())
