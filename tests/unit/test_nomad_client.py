"""The Nomad client over real HTTP: requests, blocking queries, the event stream, error texts.

A small aiohttp server plays Nomad with scripted answers (Nomad's exact error texts from the
reference notes), so each translation rule and the stream's heartbeat handling can be produced
on demand.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from aiohttp import web

from reconciler.clients.config import NomadConfig
from reconciler.clients.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PermissionDenied,
    Timeout,
    Unavailable,
)
from reconciler.clients.nomad import Allocation, Event, NomadClient, translate_status

pytestmark = pytest.mark.anyio

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeNomad:
    url: str = ""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, list[str]], dict[str, str], bytes]] = field(
        default_factory=list
    )

    def reply(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        status: int = 200,
        text: str = "",
        index: int = 17,
    ) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            payload = json.dumps(body) if body is not None else text
            return web.Response(status=status, text=payload, headers={"X-Nomad-Index": str(index)})

        self.routes[(method, path)] = handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query: dict[str, list[str]] = {}
        for k, v in request.query.items():
            query.setdefault(k, []).append(v)
        self.seen.append(
            (request.method, request.path, query, dict(request.headers), await request.read())
        )
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.Response(status=404, text="")
        return await handler(request)


@pytest.fixture
async def nomad(anyio_backend: str) -> AsyncIterator[FakeNomad]:
    fake = FakeNomad()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


def client_for(fake: FakeNomad, **kwargs: Any) -> NomadClient:
    config = NomadConfig(
        address=fake.url,
        token=kwargs.pop("token", None),
        region=kwargs.pop("region", None),
        namespace=kwargs.pop("namespace", None),
    )
    kwargs.setdefault("read_attempts", 1)
    return NomadClient(config, **kwargs)


async def test_answers_are_asked_for_uncompressed_unless_configured(nomad: FakeNomad) -> None:
    nomad.reply("GET", "/v1/job/web", JOB)
    async with client_for(nomad) as client:
        await client.read_job("web")
    assert nomad.seen[-1][3]["Accept-Encoding"] == "identity"
    config = NomadConfig(address=nomad.url, compress=True)
    async with NomadClient(config, read_attempts=1) as client:
        await client.read_job("web")
    assert "gzip" in nomad.seen[-1][3]["Accept-Encoding"]


JOB = {
    "ID": "web",
    "Name": "web",
    "Type": "service",
    "Status": "running",
    "JobModifyIndex": 35,
    "ModifyIndex": 40,
    "Version": 2,
    "TaskGroups": [{"Name": "web"}],
    "Datacenters": ["dc1"],
}

ALLOC = {
    "ID": "a1",
    "JobID": "web",
    "TaskGroup": "web",
    "ClientStatus": "running",
    "DesiredStatus": "run",
    "ModifyIndex": 50,
    "AllocatedResources": {
        "Shared": {
            "Networks": [
                {
                    "Mode": "host",
                    "IP": "10.0.0.11",
                    "DynamicPorts": [{"Label": "old", "Value": 20001}],
                }
            ],
            "Ports": [{"Label": "http", "Value": 24567, "To": 8080, "HostIP": "10.0.0.11"}],
        }
    },
}


async def test_register_sends_enforce_index_token_region_and_namespace(nomad: FakeNomad) -> None:
    nomad.reply(
        "POST",
        "/v1/jobs",
        {"EvalID": "e1", "EvalCreateIndex": 35, "JobModifyIndex": 35, "Index": 35, "Warnings": ""},
    )
    async with client_for(nomad, token="tok", region="eu", namespace="ns1") as client:
        result = await client.register_job({"ID": "web"}, enforce_index=True, job_modify_index=30)
    assert (result.eval_id, result.job_modify_index) == ("e1", 35)
    _, _, query, headers, body = nomad.seen[-1]
    assert headers["X-Nomad-Token"] == "tok"
    assert query == {"namespace": ["ns1"], "region": ["eu"]}
    assert json.loads(body) == {"Job": {"ID": "web"}, "EnforceIndex": True, "JobModifyIndex": 30}


async def test_read_job_and_typed_fields(nomad: FakeNomad) -> None:
    nomad.reply("GET", "/v1/job/web", JOB)
    nomad.reply("GET", "/v1/job/gone", status=404, text="job not found")
    async with client_for(nomad) as client:
        job = await client.read_job("web")
        assert (job.id, job.version, job.job_modify_index, job.task_groups[0]["Name"]) == (
            "web",
            2,
            35,
            "web",
        )
        assert job.model_extra == {"Datacenters": ["dc1"]}  # unknown fields are kept
        with pytest.raises(NotFound, match="job not found"):
            await client.read_job("gone")
        assert await client.get_job("gone") is None


async def test_blocking_list_returns_the_index_and_sends_wait(nomad: FakeNomad) -> None:
    nomad.reply("GET", "/v1/jobs", [JOB], index=99)
    async with client_for(nomad) as client:
        index, jobs = await client.list_jobs(prefix="we", index=98, wait=1.5)
    assert index == 99
    assert [j.id for j in jobs] == ["web"]
    query = nomad.seen[-1][2]
    assert query == {"prefix": ["we"], "index": ["98"], "wait": ["1500ms"]}


async def test_allocations_and_port_lookup(nomad: FakeNomad) -> None:
    nomad.reply("GET", "/v1/job/web/allocations", [ALLOC], index=51)
    nomad.reply("GET", "/v1/allocation/a1", ALLOC)
    async with client_for(nomad) as client:
        index, allocs = await client.job_allocations("web")
        alloc = await client.read_allocation("a1")
    assert index == 51
    assert allocs[0].id == "a1"
    assert alloc.address("http") == ("10.0.0.11", 24567)
    assert alloc.address("old") == ("10.0.0.11", 20001)  # pre-1.0 shape fallback
    assert alloc.address("nope") is None
    assert not alloc.terminal
    assert Allocation.model_validate({"ID": "x", "ClientStatus": "lost"}).terminal


async def test_deregister_purge_and_node_writes(nomad: FakeNomad) -> None:
    nomad.reply("DELETE", "/v1/job/web", {"EvalID": "e2", "Index": 41})
    nomad.reply("POST", "/v1/node/n1/drain", {"Index": 5})
    async with client_for(nomad) as client:
        assert (await client.deregister_job("web", purge=True)).eval_id == "e2"
        assert nomad.seen[-1][2] == {"purge": ["true"]}
        await client.drain_node("n1", deadline=60)
        assert json.loads(nomad.seen[-1][4]) == {
            "DrainSpec": {"Deadline": 60_000_000_000, "IgnoreSystemJobs": False},
            "MarkEligible": False,
        }


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (
            500,
            "Enforcing job modify index 5: job exists with conflicting job modify index: 7",
            Conflict,
        ),
        (500, "Enforcing job modify index 0: job already exists", Conflict),
        (
            500,
            "1 error occurred:\n\t* Task group web validation failed: 1 error occurred:\n"
            "\t* Missing task driver\n\n",
            BadRequest,
        ),
        (400, "Job ID does not match name", BadRequest),
        (403, "Permission denied", PermissionDenied),
        (404, "job not found", NotFound),
        (500, "rpc error: No cluster leader", Unavailable),
        (502, "", Unavailable),
    ],
)
async def test_errors_are_translated(
    nomad: FakeNomad, status: int, text: str, expected: type[Exception]
) -> None:
    nomad.reply("POST", "/v1/jobs", status=status, text=text)
    async with client_for(nomad) as client:
        with pytest.raises(expected) as info:
            await client.register_job({"ID": "web"}, enforce_index=True)
    assert type(info.value) is expected


def test_translate_keeps_status_and_body() -> None:
    err = translate_status(500, "Enforcing job modify index 1: job does not exist", what="x")
    assert isinstance(err, Conflict)
    assert (err.status, err.body) == (500, "Enforcing job modify index 1: job does not exist")


async def test_reads_are_retried_but_writes_are_not(nomad: FakeNomad) -> None:
    calls = {"GET": 0, "POST": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls[request.method] += 1
        if calls[request.method] == 1:
            return web.Response(status=500, text="rpc error: No cluster leader")
        return web.Response(text=json.dumps(JOB), headers={"X-Nomad-Index": "3"})

    nomad.routes[("GET", "/v1/job/web")] = flaky
    nomad.routes[("POST", "/v1/jobs")] = flaky
    async with client_for(nomad, read_attempts=3) as client:
        assert (await client.read_job("web")).id == "web"
        with pytest.raises(Unavailable):
            await client.register_job(JOB)
    assert calls == {"GET": 2, "POST": 1}


async def test_connection_refused_is_unavailable(anyio_backend: str) -> None:
    async with NomadClient(NomadConfig(address="http://127.0.0.1:1"), read_attempts=1) as client:
        with pytest.raises(Unavailable):
            await client.list_jobs()


# ----------------------------------------------------------------------------- event stream


def stream_handler(frames: list[Any], *, then_sleep: float = 10.0) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write((json.dumps(frame) + "\n").encode())
        await anyio.sleep(then_sleep)
        return resp

    return handler


async def test_event_stream_skips_heartbeats_and_yields_events(nomad: FakeNomad) -> None:
    frames: list[Any] = [
        {},
        {
            "Index": 57,
            "Events": [
                {"Topic": "Job", "Type": "JobRegistered", "Key": "web", "Payload": {"Job": JOB}}
            ],
        },
        {},
        {
            "Index": 58,
            "Events": [
                {
                    "Topic": "Allocation",
                    "Type": "PlanResult",
                    "Key": "a1",
                    "Index": 58,
                    "Payload": {"Allocation": ALLOC},
                }
            ],
        },
    ]
    nomad.routes[("GET", "/v1/event/stream")] = stream_handler(frames)
    beats = 0

    def beat() -> None:
        nonlocal beats
        beats += 1

    got: list[Event] = []
    async with client_for(nomad) as client:
        stream = client.events({"Job": ["web"], "Allocation": []}, index=5, on_heartbeat=beat)
        async with contextlib.aclosing(stream):
            async for event in stream:
                got.append(event)
                if len(got) == 2:
                    break
    assert [(e.topic, e.key, e.index) for e in got] == [
        ("Job", "web", 57),
        ("Allocation", "a1", 58),
    ]
    assert beats == 4
    query = nomad.seen[-1][2]
    assert query["topic"] == ["Job:web", "Allocation:*"]
    assert query["index"] == ["5"]
    assert query["namespace"] == ["*"]


async def test_a_silent_stream_times_out(nomad: FakeNomad) -> None:
    nomad.routes[("GET", "/v1/event/stream")] = stream_handler([{}], then_sleep=5)
    async with client_for(nomad, stream_read_timeout=0.3) as client:
        start = time.monotonic()
        with pytest.raises(Timeout):
            async for _ in client.events(["Job"]):
                pass
    assert time.monotonic() - start < 2


async def test_stream_errors(nomad: FakeNomad) -> None:
    nomad.reply("GET", "/v1/event/stream", status=403, text="Permission denied")
    async with client_for(nomad) as client:
        with pytest.raises(PermissionDenied):
            async for _ in client.events(["Job"]):
                pass
    nomad.routes[("GET", "/v1/event/stream")] = stream_handler([{}], then_sleep=0)
    async with client_for(nomad) as client:
        with pytest.raises(Unavailable, match="closed"):
            async for _ in client.events(["Job"]):
                pass
