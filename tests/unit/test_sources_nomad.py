"""The Nomad source (against the embedded Nomad, and a scripted stream) and the periodic source."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from devstack.nomad.embedded import EmbeddedNomad
from reconciler.clients.config import NomadConfig
from reconciler.clients.nomad import NomadClient, Resources
from reconciler.sources import NomadSource, PeriodicSource, Source
from reconciler.sources.base import Change

pytestmark = pytest.mark.anyio

_ids = itertools.count()

JOB: dict[str, Any] = {
    "ID": "core-hmi-1",
    "Name": "core-hmi-1",
    "Type": "service",
    "Datacenters": ["dc1"],
    "TaskGroups": [
        {
            "Name": "core",
            "Count": 1,
            "Networks": [{"Mode": "host", "DynamicPorts": [{"Label": "tcp", "To": 12345}]}],
            "Tasks": [
                {
                    "Name": "core",
                    "Driver": "docker",
                    "Config": {"image": "smartdevicelink/core", "ports": ["tcp"]},
                    "Resources": {"CPU": 100, "MemoryMB": 64},
                }
            ],
        }
    ],
}


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.changes: list[Change] = []

    def __call__(self, changes: Iterable[Change]) -> None:
        batch = list(changes)
        self.changes.extend(batch)
        self.batches.append([c.id for c in batch])

    @property
    def ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]

    async def wait_for(self, wanted: str, count: int = 1, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while self.ids.count(wanted) < count:
                await anyio.sleep(0.01)


@asynccontextmanager
async def running(source: Source, rec: Recorder) -> AsyncIterator[str]:
    controller = f"nomad-test-{next(_ids)}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(source.run, rec, controller=controller))
        yield controller
        tg.cancel_scope.cancel()


def metric(name: str, controller: str, source: str) -> float:
    value = REGISTRY.get_sample_value(name, {"controller": controller, "source": source})
    return 0.0 if value is None else value


@pytest.fixture
def embedded_nomad() -> Iterator[EmbeddedNomad]:
    server = EmbeddedNomad().start()
    server.add_node()
    yield server
    server.stop()


@pytest.fixture
async def nomad_client(
    embedded_nomad: EmbeddedNomad, anyio_backend: str
) -> AsyncIterator[NomadClient]:
    async with NomadClient(NomadConfig(address=embedded_nomad.url), read_attempts=1) as client:
        yield client


@pytest.mark.parametrize("use_stream", [False, True])
async def test_jobs_are_listed_then_followed(nomad_client: NomadClient, use_stream: bool) -> None:
    """With or without the event stream (if it fails, the source polls), changes arrive."""
    await nomad_client.register_job({**JOB, "ID": "other", "Name": "other"})
    source = NomadSource(
        nomad_client,
        "jobs",
        job_prefix="core-hmi-",
        use_stream=use_stream,
        wait=2.0,
        backoff_base=0.05,
        backoff_cap=0.2,
    )
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        assert dict(source.items()) == {}  # "other" does not match the prefix
        await nomad_client.register_job(JOB)
        await rec.wait_for("core-hmi-1")
        assert source.items()["core-hmi-1"].id == "core-hmi-1"
        # The job's status changes (pending -> running) arrive as events of their own, so wait
        # for the purge itself: the id is emitted once more and leaves the cache.
        emitted = rec.ids.count("core-hmi-1")
        await nomad_client.deregister_job("core-hmi-1", purge=True)
        with anyio.fail_after(5):
            while "core-hmi-1" in source.items():
                await anyio.sleep(0.01)
        assert rec.ids.count("core-hmi-1") > emitted
    assert "other" not in rec.ids


@pytest.mark.parametrize("use_stream", [False, True])
async def test_listed_jobs_carry_their_meta(nomad_client: NomadClient, use_stream: bool) -> None:
    await nomad_client.register_job({**JOB, "Meta": {"owner": "us"}})
    source = NomadSource(nomad_client, "jobs", use_stream=use_stream, wait=2.0)
    async with running(source, Recorder()):
        with anyio.fail_after(5):
            await source.wait_ready()
        # From the initial list, not only from stream events.
        assert source.items()["core-hmi-1"].meta == {"owner": "us"}


async def test_allocations_are_keyed_by_alloc_id(nomad_client: NomadClient) -> None:
    source = NomadSource(nomad_client, "allocations", use_stream=False, wait=2.0)
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        await nomad_client.register_job(JOB)
        with anyio.fail_after(5):
            while not source.items():
                await anyio.sleep(0.01)
        (alloc_id, alloc) = next(iter(source.items().items()))
        assert alloc.job_id == "core-hmi-1"
        assert alloc_id in rec.ids


async def test_stream_items_are_as_small_as_listed_ones(nomad_client: NomadClient) -> None:
    """An event's job is the whole job and an event's allocation embeds it: the cache keeps
    what the list endpoints give (a stub; an allocation without its job), or thousands of
    users would be thousands of whole jobs in memory."""
    jobs = NomadSource(nomad_client, "jobs", use_stream=True, wait=2.0)
    allocs = NomadSource(nomad_client, "allocations", use_stream=True, wait=2.0, resources=True)
    async with running(jobs, Recorder()), running(allocs, Recorder()):
        with anyio.fail_after(5):
            await jobs.wait_ready()
            await allocs.wait_ready()
        assert jobs.mode == "stream"
        assert allocs.mode == "stream"
        await nomad_client.register_job({**JOB, "Meta": {"owner": "us"}})
        with anyio.fail_after(5):
            while "core-hmi-1" not in jobs.items() or not allocs.items():
                await anyio.sleep(0.01)
        stub = jobs.items()["core-hmi-1"]
        assert stub.meta == {"owner": "us"}
        assert stub.job_modify_index > 0
        assert "TaskGroups" not in (stub.model_extra or {})
        (alloc,) = allocs.items().values()
        assert alloc.job_id == "core-hmi-1"
        assert "Job" not in (alloc.model_extra or {})
        assert alloc.resources.cpu == 100, "the resources a capacity needs are kept"


@pytest.mark.parametrize("use_stream", [False, True])
async def test_nodes_carry_their_resources_and_follow_eligibility(
    nomad_client: NomadClient, embedded_nomad: EmbeddedNomad, use_stream: bool
) -> None:
    source = NomadSource(nomad_client, "nodes", use_stream=use_stream, wait=2.0)
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        assert source.items()
        node_id, node = sorted(source.items().items())[0]
        assert node.schedulable
        free = node.allocatable
        assert free is not None
        assert free.cpu > 0
        assert free.memory_mb > 0
        # A placed allocation reports what it holds, so capacity can be computed from caches.
        await nomad_client.register_job(JOB)
        with anyio.fail_after(5):
            while not (allocs := (await nomad_client.list_allocations(resources=True))[1]):
                await anyio.sleep(0.01)
        assert allocs[0].resources.cpu == 100
        assert allocs[0].resources.memory_mb == 64

        seen = rec.ids.count(node_id)
        await nomad_client.set_node_eligibility(node_id, eligible=False)
        await rec.wait_for(node_id, count=seen + 1)
        with anyio.fail_after(5):
            while source.items()[node_id].schedulable:
                await anyio.sleep(0.01)
        second = embedded_nomad.add_node()
        await rec.wait_for(second)
        assert source.items()[second].schedulable


def test_resources_arithmetic() -> None:
    free = Resources(cpu=1000, memory_mb=1024, disk_mb=5000)
    per_user = Resources(cpu=160, memory_mb=325, disk_mb=1030)
    assert free.times(per_user) == 3  # memory runs out first
    assert (free - per_user).cpu == 840
    assert (free + free).disk_mb == 10000
    assert Resources(cpu=-5, memory_mb=100, disk_mb=100).times(per_user) == 0
    with pytest.raises(ValueError):
        free.times(Resources())


# ----------------------------------------------------------------------------- scripted stream


@pytest.fixture
async def scripted_nomad(anyio_backend: str) -> AsyncIterator[dict[str, Any]]:
    """A Nomad whose stream is either refused or serves the frames in ``state["frames"]``."""
    state: dict[str, Any] = {"frames": [], "stream_status": 200, "jobs": [], "stream_calls": 0}

    async def jobs(request: web.Request) -> web.StreamResponse:
        if request.query.get("index"):
            await anyio.sleep(min(0.3, float(request.query.get("wait", "300000ms")[:-2]) / 1000))
        index = str(10 + 10 * len(state["jobs"]))  # the index moves only when the list does
        return web.Response(text=json.dumps(state["jobs"]), headers={"X-Nomad-Index": index})

    async def stream(request: web.Request) -> web.StreamResponse:
        state["stream_calls"] += 1
        if state["stream_status"] != 200:
            return web.Response(status=state["stream_status"], text="Permission denied")
        resp = web.StreamResponse()
        await resp.prepare(request)
        for frame in state["frames"]:
            await resp.write((json.dumps(frame) + "\n").encode())
        await anyio.sleep(5)
        return resp

    app = web.Application()
    app.router.add_get("/v1/jobs", jobs)
    app.router.add_get("/v1/event/stream", stream)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


async def test_stream_events_update_the_cache(scripted_nomad: dict[str, Any]) -> None:
    job = {"ID": "web", "ModifyIndex": 11, "Status": "pending"}
    scripted_nomad["frames"] = [
        {},
        {
            "Index": 11,
            "Events": [
                {"Topic": "Job", "Type": "JobRegistered", "Key": "web", "Payload": {"Job": job}}
            ],
        },
        {
            "Index": 12,
            "Events": [
                {"Topic": "Evaluation", "Type": "EvaluationUpdated", "Key": "e", "Payload": {}}
            ],
        },
    ]
    async with NomadClient(NomadConfig(address=scripted_nomad["url"])) as client:
        source = NomadSource(client, "jobs")
        rec = Recorder()
        async with running(source, rec) as controller:
            await rec.wait_for("web")
            assert source.mode == "stream"
            assert source.items()["web"].status == "pending"
            assert metric("reconciler_watch_errors_total", controller, source.name) == 0
        assert rec.batches == [["web"]]


async def test_refused_stream_falls_back_to_blocking_queries(
    scripted_nomad: dict[str, Any],
) -> None:
    scripted_nomad["stream_status"] = 403
    async with NomadClient(NomadConfig(address=scripted_nomad["url"])) as client:
        source = NomadSource(client, "jobs", wait=0.3)
        rec = Recorder()
        async with running(source, rec) as controller:
            with anyio.fail_after(5):
                while source.mode != "poll":
                    await anyio.sleep(0.01)
            assert source.ready
            scripted_nomad["jobs"] = [{"ID": "late", "ModifyIndex": 20}]
            await rec.wait_for("late")
            assert metric("reconciler_watch_errors_total", controller, source.name) == 1
        assert scripted_nomad["stream_calls"] == 1  # refused for good: not asked again
        assert source.use_stream is False


# ----------------------------------------------------------------------------- periodic


async def test_periodic_source_emits_its_keys_every_period(anyio_backend: str) -> None:
    source = PeriodicSource(["waiting-list"], every=0.05)
    assert source.ready is False
    rec = Recorder()
    async with running(source, rec) as controller:
        await rec.wait_for("waiting-list", count=3)
        assert source.ready
        assert dict(source.items()) == {"waiting-list": "waiting-list"}  # a key is its own item
        assert metric("reconciler_watch_events_total", controller, source.name) >= 3


async def test_periodic_source_with_a_callable_survives_its_failures(anyio_backend: str) -> None:
    calls = 0

    async def keys() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return [f"k{calls}"]

    source = PeriodicSource(keys, every=0.02, emit_at_start=False)
    rec = Recorder()
    async with running(source, rec) as controller:
        await rec.wait_for("k3")
        assert metric("reconciler_watch_errors_total", controller, source.name) == 1
    assert rec.ids[:2] == ["k1", "k3"]


def test_periodic_source_rejects_a_zero_period() -> None:
    with pytest.raises(ValueError):
        PeriodicSource(["x"], every=0)
