"""waitlist and jobs run with nothing but their published ACL policies, in Consul and Nomad.

Consul runs with ``default_policy=deny`` and Nomad with ACLs on; each controller gets one token
made from its Consul policy (``charts/policies/<name>.hcl``) and one from its Nomad policy
(``charts/policies/<name>-nomad.hcl``), converges a real scenario with them, and those tokens
can write exactly what the controller owns and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from controllers import jobs, waitlist
from controllers.api.ids import REQUESTS_PREFIX, WAITING_KEY, job_id
from controllers.api.waiting import decode_pages
from controllers.settings import Settings
from devstack.consul import ConsulServer
from devstack.fakes import job_settings_env
from devstack.nomad.embedded import EmbeddedNomad
from devstack.nomad.testing import start_embedded_nomad
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import PermissionDenied
from reconciler.clients.nomad import NomadClient
from reconciler.controller import Controller, RunnerOptions
from reconciler.manager import Manager, ManagerOptions
from tests.integration.helpers import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CONSUL_MASTER = "consul-root-for-least-privilege"
NOMAD_MASTER = "nomad-root-for-least-privilege"

OWNED = {
    "waitlist": [
        "manticore/waiting/data",
        "manticore/waiting/data-7",
        "reconciler/status/waitlist/x",
    ],
    "jobs": ["reconciler/status/jobs/x"],
}
OTHERS = [
    "manticore/requests/data/x",
    "manticore/allocations/data/x",
    "manticore/routes/data/x",
    "manticore/elb/data/x",
    "haproxy/data/x",
    "reconciler/leader/allocations",
    "reconciler/status/allocations/x",
    "somebody/else",
]


@pytest.fixture
def acl_consul() -> Iterator[ConsulServer]:
    with ConsulServer(acl_master_token=CONSUL_MASTER, acl_default_policy="deny") as server:
        yield server


@pytest.fixture
def acl_nomad(acl_consul: ConsulServer) -> Iterator[EmbeddedNomad]:
    server = start_embedded_nomad(
        nodes=1,
        node_cpu=320,
        acl_master_token=NOMAD_MASTER,
        consul_addr=acl_consul.url,
        consul_token=CONSUL_MASTER,
    )
    try:
        yield server
    finally:
        server.stop()


def consul_token(server: ConsulServer, name: str) -> str:
    rules = (ROOT / "charts" / "policies" / f"{name}.hcl").read_text()
    with httpx.Client(
        base_url=server.url, headers={"X-Consul-Token": CONSUL_MASTER}, trust_env=False, timeout=30
    ) as http:
        http.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).raise_for_status()
        reply = http.put("/v1/acl/token", json={"Policies": [{"Name": name}]})
        reply.raise_for_status()
        return str(reply.json()["SecretID"])


def nomad_token(server: EmbeddedNomad, name: str) -> str:
    rules = (ROOT / "charts" / "policies" / f"{name}-nomad.hcl").read_text()
    with httpx.Client(
        base_url=server.url, headers={"X-Nomad-Token": NOMAD_MASTER}, trust_env=False, timeout=30
    ) as http:
        http.post(f"/v1/acl/policy/{name}", json={"Name": name, "Rules": rules}).raise_for_status()
        reply = http.post(
            "/v1/acl/token", json={"Name": name, "Type": "client", "Policies": [name]}
        )
        reply.raise_for_status()
        return str(reply.json()["SecretID"])


def env(consul: ConsulServer, nomad: EmbeddedNomad, ctoken: str, ntoken: str) -> dict[str, str]:
    return {
        "CONSUL_HTTP_ADDR": consul.address,
        "CONSUL_HTTP_TOKEN": ctoken,
        "NOMAD_ADDR": nomad.url,
        "NOMAD_TOKEN": ntoken,
    }


@contextlib.asynccontextmanager
async def running_as(controller: Controller, environ: dict[str, str]) -> AsyncIterator[Manager]:
    manager = Manager(
        [controller],
        options=ManagerOptions(metrics_port=0, runner=RunnerOptions(identity="scoped")),
        config=ClientsConfig.from_env(environ),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        try:
            yield manager
        finally:
            manager.stop()


async def assert_consul_writes_only_what_it_owns(environ: dict[str, str], name: str) -> None:
    async with ConsulClient(ClientsConfig.from_env(environ).consul) as limited:
        for key in OWNED[name]:
            assert await limited.kv_put(key, b"probe"), key
            await limited.kv_delete(key)
        others = [k for c, keys in OWNED.items() if c != name for k in keys] + OTHERS
        others.append(f"reconciler/leader/{'jobs' if name == 'waitlist' else 'waitlist'}")
        for key in others:
            with pytest.raises(PermissionDenied):
                await limited.kv_put(key, b"probe")


def probe_job(user: str) -> dict[str, Any]:
    return {
        "ID": job_id(user),
        "Name": job_id(user),
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {
                "Name": "g",
                "Tasks": [{"Name": "t", "Driver": "docker", "Config": {"image": "x"}}],
            }
        ],
    }


async def test_waitlist_and_jobs_with_their_own_tokens(acl_consul, acl_nomad) -> None:
    tokens = {
        name: (consul_token(acl_consul, name), nomad_token(acl_nomad, name))
        for name in ("waitlist", "jobs")
    }
    environs = {name: env(acl_consul, acl_nomad, *pair) for name, pair in tokens.items()}
    for name, environ in environs.items():
        await assert_consul_writes_only_what_it_owns(environ, name)
    # Nomad: the waitlist only reads; jobs submits jobs and can do nothing to nodes
    async with NomadClient(ClientsConfig.from_env(environs["waitlist"]).nomad) as reader:
        _, nodes = await reader.list_nodes(resources=True)
        assert nodes
        await reader.list_allocations(namespace="*")
        with pytest.raises(PermissionDenied):
            await reader.register_job(probe_job("probe"))
    async with NomadClient(ClientsConfig.from_env(environs["jobs"]).nomad) as submitter:
        with pytest.raises(PermissionDenied):
            await submitter.list_nodes()
        with pytest.raises(PermissionDenied):
            await submitter.set_node_eligibility(nodes[0].id, eligible=False)

    settings = Settings.from_env(job_settings_env())
    root_env = env(acl_consul, acl_nomad, CONSUL_MASTER, NOMAD_MASTER)
    async with (
        running_as(waitlist.build(settings), environs["waitlist"]) as wl,
        running_as(jobs.build(settings), environs["jobs"]) as jb,
        ConsulClient(ClientsConfig.from_env(root_env).consul) as root,
    ):
        await eventually(lambda: wl.ready and jb.ready, timeout=20)
        for user in ("ada", "bob", "cy"):
            await root.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")

        def job_of(user: str) -> dict[str, Any] | None:
            reply = httpx.get(
                f"{acl_nomad.url}/v1/job/{job_id(user)}",
                headers={"X-Nomad-Token": NOMAD_MASTER},
                trust_env=False,
                timeout=30,
            )
            return None if reply.status_code == 404 else dict(reply.json())

        await eventually(lambda: job_of("ada") and job_of("bob"), timeout=30)

        async def claimed() -> list[str]:
            _, entries = await root.kv_list(WAITING_KEY)
            return decode_pages(entries).claimed()

        assert await claimed() == ["ada", "bob"]
        assert job_of("cy") is None
        # ada leaves: purged with the jobs token, cy claimed with the waitlist token
        await root.kv_delete(f"{REQUESTS_PREFIX}ada")
        await eventually(lambda: job_of("ada") is None and job_of("cy") is not None, timeout=30)

        async def cy_claimed() -> bool:
            return await claimed() == ["bob", "cy"]

        await eventually(cy_claimed, timeout=30)
