"""The project's typed Nomad client against the cluster under test (emulator or NOMAD_ADDR)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from reconciler.clients.errors import Conflict, NotFound
from reconciler.clients.nomad import NomadClient

from .helpers import docker_job

pytestmark = [pytest.mark.contract, pytest.mark.anyio]


async def test_register_read_and_cas(nomad_client_config: Any, job_id: str) -> None:
    async with NomadClient(nomad_client_config) as client:
        created = await client.register_job(docker_job(job_id), enforce_index=True)
        job = await client.read_job(job_id)
        assert job.id == job_id
        assert job.job_modify_index == created.job_modify_index
        with pytest.raises(Conflict):
            await client.register_job(docker_job(job_id), enforce_index=True, job_modify_index=0)
        _index, stubs = await client.list_jobs(prefix=job_id)
        assert [s.id for s in stubs] == [job_id]
        await client.deregister_job(job_id, purge=True)
        assert await client.get_job(job_id) is None
        with pytest.raises(NotFound):
            await client.read_job(job_id)


async def test_allocations_and_nodes(
    nomad_client_config: Any, nomad_target: Any, job_id: str
) -> None:
    async with NomadClient(nomad_client_config) as client:
        await client.register_job(docker_job(job_id, ports=("http",)))
        _index, nodes = await client.list_nodes()
        assert nodes
        if not nomad_target.embedded:
            return
        with anyio.fail_after(10):
            while True:
                _index, allocs = await client.job_allocations(job_id)
                if allocs and allocs[0].client_status == "running":
                    break
                await anyio.sleep(0.05)
        full = await client.read_allocation(allocs[0].id)
        host, port = full.address("http") or ("", 0)
        assert host == "127.0.0.1"
        assert 20000 <= port <= 32000
        node = await client.read_node(full.node_id)
        assert node.id == full.node_id
