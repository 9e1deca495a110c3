"""The jobs controller (with the waitlist) on the devstack: real raw_exec fakes, real Consul
services, EnforceIndex, purge, drift, ownership and blocked placements.

Nomad has one node with room for two users of the devstack template, so the third user waits;
each claimed user's fake core and HMI really run and pass their health checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controllers import jobs, waitlist
from controllers.api.ids import REQUESTS_PREFIX, WAITING_KEY, job_id
from controllers.api.waiting import decode_pages
from controllers.settings import Settings
from controllers.templates import JobTemplate
from devstack.fakes import RAW_EXEC_TEMPLATE, job_settings_env
from devstack.nomad.embedded import EmbeddedNomad
from devstack.nomad.testing import start_embedded_nomad
from reconciler.clients.consul import ConsulClient
from tests.integration.helpers import eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ENV = job_settings_env()
PER = JobTemplate.load(RAW_EXEC_TEMPLATE, variables={"python": "x"}).resources


@pytest.fixture
def two_user_nomad(consul_server: Any) -> Iterator[EmbeddedNomad]:
    server = start_embedded_nomad(nodes=1, node_cpu=PER.cpu * 2 + 20, consul_addr=consul_server.url)
    try:
        yield server
    finally:
        server.stop()


def nomad_job(nomad: EmbeddedNomad, user: str) -> dict[str, Any] | None:
    resp = httpx.get(f"{nomad.url}/v1/job/{job_id(user)}", trust_env=False)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return dict(resp.json())


def submit(nomad: EmbeddedNomad, job: dict[str, Any]) -> None:
    httpx.post(f"{nomad.url}/v1/jobs", json={"Job": job}, trust_env=False).raise_for_status()


def purge_by_hand(nomad: EmbeddedNomad, user: str) -> None:
    httpx.delete(
        f"{nomad.url}/v1/job/{job_id(user)}", params={"purge": "true"}, trust_env=False
    ).raise_for_status()


def passing(consul_url: str, user: str, role: str) -> str | None:
    resp = httpx.get(
        f"{consul_url}/v1/health/service/{job_id(user)}-{role}",
        params={"passing": "1"},
        trust_env=False,
    )
    resp.raise_for_status()
    entries = resp.json()
    if not entries:
        return None
    svc = entries[0]["Service"]
    return f"{svc['Address']}:{svc['Port']}"


async def claimed(consul: ConsulClient) -> list[str]:
    _, entries = await consul.kv_list(WAITING_KEY)
    return decode_pages(entries).claimed()


async def status(consul: ConsulClient, controller: str, user: str) -> dict[str, Any] | None:
    _, entry = await consul.kv_get(f"reconciler/status/{controller}/{user}")
    return None if entry is None else dict(json.loads(entry.value or b"{}"))


def hmi_page(address: str) -> str:
    try:
        return httpx.get(f"http://{address}/", timeout=3, trust_env=False).text
    except httpx.HTTPError:
        return ""


async def test_claimed_users_get_running_jobs_and_departures_purge(
    consul_server, two_user_nomad
) -> None:
    nomad = two_user_nomad
    settings = Settings.from_env(ENV)
    async with running(
        [waitlist.build(settings), jobs.build(settings)],
        consul_server.address,
        nomad_address=nomad.url,
    ) as (manager, consul):
        for user in ("ada", "bob", "cy"):
            await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")
        # ada and bob are claimed, get a job each, and their fakes answer through Consul
        # (the HMI's check may pass a moment before its core listens: wait for both)
        for user in ("ada", "bob"):
            address = await eventually(
                lambda user=user: (
                    passing(consul_server.url, user, "core")
                    and passing(consul_server.url, user, "hmi")
                ),
                timeout=30,
            )
            expected = f"hmi {user}\ncore: core {user}\n"
            assert await eventually(lambda a=address, e=expected: hmi_page(a) == e, timeout=10)
        assert nomad_job(nomad, "cy") is None
        job = nomad_job(nomad, "ada")
        assert job is not None
        assert job["Meta"]["manticore_owner"] == "manticore-reconciler"
        assert job["Meta"]["manticore_user"] == "ada"
        assert job["Version"] == 0
        # ada leaves: her job is purged (gone, not just stopped), cy is claimed and runs
        await consul.kv_delete(f"{REQUESTS_PREFIX}ada")
        await eventually(lambda: nomad_job(nomad, "ada") is None, timeout=30)
        cy = await eventually(lambda: passing(consul_server.url, "cy", "hmi"), timeout=30)
        assert hmi_page(cy).startswith("hmi cy\n")
        assert await claimed(consul) == ["bob", "cy"]
        # a job purged by hand comes back
        purge_by_hand(nomad, "bob")
        await eventually(lambda: nomad_job(nomad, "bob") is not None, timeout=30)
        # a job edited by hand (meta kept) is put back, once
        edited = nomad_job(nomad, "bob")
        assert edited is not None
        edited["TaskGroups"][0]["Tasks"][0]["Env"] = {"EDITED": "by hand"}
        submit(nomad, edited)

        def restored() -> bool:
            job = nomad_job(nomad, "bob")
            return job is not None and not job["TaskGroups"][0]["Tasks"][0].get("Env")

        await eventually(restored, timeout=30)
        version = nomad_job(nomad, "bob")["Version"]  # type: ignore[index]
        manager.runners["jobs"].resync()
        await eventually(lambda: passing(consul_server.url, "bob", "hmi"), timeout=30)
        import anyio

        await anyio.sleep(1.0)
        assert nomad_job(nomad, "bob")["Version"] == version  # type: ignore[index]


def foreign_job(user: str) -> dict[str, Any]:
    """A job under our naming scheme that another team owns (no ownership meta of ours)."""
    return {
        "ID": job_id(user),
        "Name": job_id(user),
        "Type": "service",
        "Datacenters": ["dc1"],
        "Meta": {"team": "someone-else"},
        "TaskGroups": [
            {
                "Name": "web",
                "Tasks": [
                    {
                        "Name": "web",
                        "Driver": "docker",
                        "Config": {"image": "nginx"},
                        "Resources": {"CPU": 10, "MemoryMB": 10},
                    }
                ],
                "EphemeralDisk": {"SizeMB": 10},
            }
        ],
    }


async def test_jobs_without_our_meta_are_left_alone(consul_server, two_user_nomad) -> None:
    nomad = two_user_nomad
    settings = Settings.from_env(ENV)
    foreign = foreign_job("dan")
    submit(nomad, foreign)
    submit(nomad, foreign_job("eli"))
    async with running(
        [waitlist.build(settings), jobs.build(settings)],
        consul_server.address,
        nomad_address=nomad.url,
    ) as (_manager, consul):
        await consul.kv_put(f"{REQUESTS_PREFIX}dan", b"{}")
        report = await eventually(lambda: status(consul, "jobs", "dan"), timeout=30)
        assert report["phase"] == "Conflict"
        job = nomad_job(nomad, "dan")
        assert job is not None
        assert job["Meta"] == {"team": "someone-else"}
        assert job["Version"] == 0
        # eli has no request: her foreign job is not purged either
        assert nomad_job(nomad, "eli") is not None
        # dan leaves: the report goes (whichever reconcile wrote it), the foreign job stays
        await consul.kv_delete(f"{REQUESTS_PREFIX}dan")

        async def report_gone() -> bool:
            return await status(consul, "jobs", "dan") is None

        await eventually(report_gone, timeout=30)
        job = nomad_job(nomad, "dan")
        assert job is not None
        assert job["Version"] == 0


async def test_a_foreign_job_is_reported_when_the_claim_comes_after_the_request(
    consul_server, two_user_nomad
) -> None:
    """The request reaches jobs before the user is claimed (so the user's own reconcile says
    nothing), then the claim arrives through the waiting list alone: the list's sweep must
    report the foreign job (it once skipped every job without our meta)."""
    nomad = two_user_nomad
    settings = Settings.from_env(ENV)
    foreign = foreign_job("dan")
    submit(nomad, foreign)
    async with running([jobs.build(settings)], consul_server.address, nomad_address=nomad.url) as (
        manager,
        consul,
    ):
        await consul.kv_put(f"{REQUESTS_PREFIX}dan", b"{}")
        requests = manager.runners["jobs"].sources[jobs.REQUESTS_WATCH]
        await eventually(lambda: f"{REQUESTS_PREFIX}dan" in requests.items(), timeout=30)
        queue = manager.runners["jobs"].queue

        def idle() -> bool:
            stats = queue.statistics()
            return stats.depth == 0 and stats.processing == 0

        await eventually(idle, timeout=10)
        assert await status(consul, "jobs", "dan") is None, "not claimed yet: nothing to say"
        async with running(
            [waitlist.build(settings)],
            consul_server.address,
            nomad_address=nomad.url,
            identity="waitlist",
        ):
            report = await eventually(lambda: status(consul, "jobs", "dan"), timeout=30)
            assert report["phase"] == "Conflict"
            assert report["owner"] == "*", "reported by the list's sweep"
        job = nomad_job(nomad, "dan")
        assert job is not None
        assert job["Meta"] == {"team": "someone-else"}


async def test_a_job_nomad_cannot_place_is_reported_blocked(consul_server) -> None:
    # Without Consul the nodes lack consul.version, which services need: a real blocked eval.
    nomad = start_embedded_nomad(nodes=1)
    try:
        settings = Settings.from_env(ENV)
        async with running(
            [waitlist.build(settings), jobs.build(settings)],
            consul_server.address,
            nomad_address=nomad.url,
        ) as (_manager, consul):
            await consul.kv_put(f"{REQUESTS_PREFIX}fay", b"{}")
            report = await eventually(lambda: _phase(consul, "jobs", "fay", "Blocked"), timeout=30)
            assert "consul.version" in report["message"]
            from prometheus_client import REGISTRY

            assert REGISTRY.get_sample_value("manticore_blocked_placements") == 1
            assert await claimed(consul) == ["fay"], "a blocked user stays claimed"
            # leaving clears everything
            await consul.kv_delete(f"{REQUESTS_PREFIX}fay")
            await eventually(lambda: nomad_job(nomad, "fay") is None, timeout=30)

            async def gone() -> bool:
                return await status(consul, "jobs", "fay") is None

            await eventually(gone, timeout=30)
            assert REGISTRY.get_sample_value("manticore_blocked_placements") == 0
    finally:
        nomad.stop()


async def _phase(consul: ConsulClient, controller: str, user: str, phase: str) -> Any:
    got = await status(consul, controller, user)
    return got if got is not None and got["phase"] == phase else None


async def test_a_new_template_updates_each_job_in_place_once(
    consul_server, two_user_nomad, tmp_path
) -> None:
    nomad = two_user_nomad
    first = Settings.from_env(ENV)
    async with running(
        [waitlist.build(first), jobs.build(first)],
        consul_server.address,
        nomad_address=nomad.url,
    ) as (_manager, consul):
        await consul.kv_put(f"{REQUESTS_PREFIX}gus", b"{}")
        await eventually(lambda: passing(consul_server.url, "gus", "hmi"), timeout=30)
    before = nomad_job(nomad, "gus")
    assert before is not None
    doc = json.loads(RAW_EXEC_TEMPLATE.read_text())
    doc["Job"]["TaskGroups"][0]["Tasks"][1]["Env"] = {"HMI_THEME": "dark"}
    newer = tmp_path / "core-hmi.json"
    newer.write_text(json.dumps(doc))
    second = Settings.from_env({**ENV, "MANTICORE_JOB_TEMPLATE": str(newer)})
    async with running(
        [waitlist.build(second), jobs.build(second)],
        consul_server.address,
        nomad_address=nomad.url,
        identity="second",
    ) as (manager, consul):

        def updated() -> dict[str, Any] | None:
            job = nomad_job(nomad, "gus")
            env = (job or {})["TaskGroups"][0]["Tasks"][1].get("Env") or {}
            return job if env.get("HMI_THEME") == "dark" else None

        job = await eventually(updated, timeout=30)
        assert job["Version"] == before["Version"] + 1
        assert job["Meta"]["manticore_template"] != before["Meta"]["manticore_template"]
        assert job["CreateIndex"] == before["CreateIndex"], "updated in place, not recreated"
        await eventually(lambda: passing(consul_server.url, "gus", "hmi"), timeout=30)
        manager.runners["jobs"].resync()
        import anyio

        await anyio.sleep(1.0)
        assert nomad_job(nomad, "gus")["Version"] == job["Version"]  # type: ignore[index]
