"""The intake API against the embedded Consul: requests, status, events, activity, departure."""

from __future__ import annotations

import datetime as dt
import gc
import json

import anyio
import httpx
import pytest

from controllers.api.expiry import EXPIRY_PREFIX
from reconciler.clients.consul import ConsulClient
from tests.integration.frontdoor.helpers import (
    PAGE,
    REQ,
    api_settings,
    base_url,
    intake,
    page,
    read_events,
    routes,
)
from tests.integration.helpers import clients_config, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BODY = {"id": "ada", "core": {"version": "8.2.0"}, "hmi": {"type": "generic"}}


@pytest.fixture
async def consul(consul_server):
    async with ConsulClient(clients_config(consul_server.address).consul) as client:
        yield client


async def test_options_come_from_configuration(consul_server) -> None:
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running)) as http,
    ):
        options = (await http.get("/api/v1/options")).json()
    assert options["core"]["versions"] == ["8.2.0"]
    assert options["hmi"]["default_type"] == "generic"
    assert options["usage"]["usage_duration"] == 600
    assert options["jwt"] is False


async def test_post_is_idempotent_and_never_overwrites(consul_server, consul) -> None:
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running)) as http,
    ):
        first = await http.post("/api/v1/requests", json=BODY)
        assert first.status_code == 200, first.text
        _, entry = await consul.kv_get(REQ + "ada")
        assert entry is not None
        stored = json.loads(entry.value)
        assert stored["core"] == {"version": "8.2.0"}
        assert "requested_at" in stored
        again = await http.post("/api/v1/requests", json=BODY)
        assert again.status_code == 200
        assert again.json() == first.json()
        _, same = await consul.kv_get(REQ + "ada")
        assert same.modify_index == entry.modify_index  # not rewritten
        other = await http.post("/api/v1/requests", json={**BODY, "core": {"build": "default"}})
        assert other.status_code == 409
        assert "DELETE it first" in other.json()["detail"]
        # right after the POST, this instance already answers for the new request
        status = (await http.get("/api/v1/requests/ada")).json()
        assert status["state"] == "waiting"
        assert status["position"] is None


async def test_state_follows_the_kv_contract(consul_server, consul) -> None:
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running)) as http,
    ):
        assert (await http.post("/api/v1/requests", json=BODY)).status_code == 200
        await consul.kv_put(REQ + "bob", b"{}")
        await consul.kv_put(PAGE, page(waiting=["bob", "ada"]))

        async def status():
            return (await http.get("/api/v1/requests/ada")).json()

        waiting = await eventually(lambda: _when(status, lambda s: s["position"] == 1))
        assert waiting["waiting"] == 2
        await consul.kv_put(PAGE, page(claimed=["ada"], waiting=["bob"]))
        starting = await eventually(lambda: _when(status, lambda s: s["state"] == "starting"))
        assert starting["addresses"] is None
        await consul.kv_put("haproxy/domainName", b"manticore.test")
        await consul.kv_put("haproxy/mainPort", b"8080")
        await consul.kv_put("haproxy/data/ada", routes(core_port=20005))
        ready = await eventually(lambda: _when(status, lambda s: s["state"] == "ready"))
        addresses = ready["addresses"]
        assert addresses["hmi_url"] == "http://" + "h" * 16 + ".manticore.test:8080"
        assert addresses["broker_url"] == "ws://" + "b" * 16 + ".manticore.test:8080"
        assert addresses["core_tcp"] == "manticore.test:20005"
        warned = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).isoformat()
        record = {
            "started_at": "2029-12-31T23:00:00Z",
            "warn_at": warned,
            "expires_at": "2030-01-01T00:01:00Z",
            "warned_at": warned,
        }
        await consul.kv_put(EXPIRY_PREFIX + "ada", json.dumps(record).encode())
        expiring = await eventually(lambda: _when(status, lambda s: s["state"] == "expiring"))
        assert expiring["warned"] is True
        assert expiring["expires_at"].startswith("2030-01-01T00:01:00")
        assert expiring["addresses"]["core_tcp"] == "manticore.test:20005"


async def test_with_an_elb_the_tcp_address_is_the_users_listener(consul_server, consul) -> None:
    from controllers.settings import ELBSettings

    settings = api_settings(elb=ELBSettings(load_balancers=("lb-one",)))
    async with (
        intake(consul_server.address, settings) as running,
        httpx.AsyncClient(base_url=base_url(running)) as http,
    ):
        await http.post("/api/v1/requests", json=BODY)
        await consul.kv_put(PAGE, page(claimed=["ada"]))
        await consul.kv_put("haproxy/data/ada", routes(core_port=20005))

        async def status():
            return (await http.get("/api/v1/requests/ada")).json()

        await eventually(lambda: _when(status, lambda s: s["state"] == "starting"))
        record = {
            "load_balancer": "lb-one",
            "dns_name": "lb-one-123.us-east-1.elb.amazonaws.com",
            "listeners": [{"role": "core", "port": 20005, "instance_port": 20005}],
        }
        await consul.kv_put("manticore/elb/data/ada", json.dumps(record).encode())
        ready = await eventually(lambda: _when(status, lambda s: s["state"] == "ready"))
        assert ready["addresses"]["core_tcp"] == "lb-one-123.us-east-1.elb.amazonaws.com:20005"
        assert ready["addresses"]["hmi_url"] == "http://" + "h" * 16 + ".manticore.test"


async def test_events_push_every_change_then_end(consul_server, consul) -> None:
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running), timeout=20) as http,
    ):
        await http.post("/api/v1/requests", json=BODY)
        await consul.kv_put(REQ + "bob", b"{}")
        await consul.kv_put(PAGE, page(waiting=["bob", "ada"]))
        seen: list[tuple[str, dict]] = []
        async with http.stream("GET", "/api/v1/requests/ada/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response)
            with anyio.fail_after(15):
                event, data = await anext(events)
                while data.get("position") != 1:  # the first event may predate the list
                    event, data = await anext(events)
                seen.append((event, data))
                await consul.kv_put(REQ + "bob", b"{}")  # no change for ada: no event
                await consul.kv_delete(REQ + "bob")
                await consul.kv_put(PAGE, page(waiting=["ada"]))
                seen.append(await anext(events))
                await consul.kv_put(PAGE, page(claimed=["ada"]))
                seen.append(await anext(events))
                await consul.kv_put("haproxy/data/ada", routes())
                seen.append(await anext(events))
                await consul.kv_delete(REQ + "ada")
                seen.append(await anext(events))
                with pytest.raises(StopAsyncIteration):
                    await anext(events)
        states = [(e, d.get("state"), d.get("position")) for e, d in seen]
        assert states == [
            ("status", "waiting", 1),
            ("status", "waiting", 0),
            ("status", "starting", None),
            ("status", "ready", None),
            ("ended", "ended", None),
        ]
        assert seen[3][1]["addresses"]["core_tcp"].endswith(":20001")


async def test_activity_is_recorded_on_the_request(consul_server, consul) -> None:
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running)) as http,
    ):
        missing = await http.post("/api/v1/requests/ada/activity")
        assert missing.status_code == 404
        await http.post("/api/v1/requests", json=BODY)
        recorded = await http.post("/api/v1/requests/ada/activity")
        assert recorded.status_code == 200, recorded.text
        _, entry = await consul.kv_get(REQ + "ada")
        stored = json.loads(entry.value)
        assert dt.datetime.fromisoformat(stored["last_activity"]) == dt.datetime.fromisoformat(
            recorded.json()["last_activity"]
        )
        assert stored["core"] == {"version": "8.2.0"}  # the rest of the request is kept
        again = await http.post("/api/v1/requests/ada/activity")
        assert again.json()["last_activity"] == recorded.json()["last_activity"]  # throttled
        _, same = await consul.kv_get(REQ + "ada")
        assert same.modify_index == entry.modify_index


async def test_delete_is_idempotent(consul_server, consul) -> None:
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running)) as http,
    ):
        await http.post("/api/v1/requests", json=BODY)
        assert (await http.delete("/api/v1/requests/ada")).status_code == 204
        _, entry = await consul.kv_get(REQ + "ada")
        assert entry is None
        assert (await http.get("/api/v1/requests/ada")).status_code == 404
        assert (await http.delete("/api/v1/requests/ada")).status_code == 204


async def test_registers_as_the_web_app_and_deregisters_on_shutdown(consul_server, consul) -> None:
    async with intake(consul_server.address) as running:

        async def passing():
            _, found = await consul.health_service("manticore-service", passing=True)
            return found

        instances = await eventually(passing, timeout=20)
        assert [(i.address, i.port) for i in instances] == [("127.0.0.1", running.port)]
        async with httpx.AsyncClient(base_url=base_url(running)) as http:
            ready = (await http.get("/readyz")).json()
        assert ready["ok"] is True
        assert ready["registered"] is True
    _, left = await consul.health_service("manticore-service")
    assert left == []


async def _when(fetch, predicate):
    value = await fetch()
    return value if predicate(value) else None


async def test_stream_wire_keepalives_disconnect_and_time_limit(consul_server, consul) -> None:
    """On the wire: the retry hint with the first status, keep-alive comments while nothing
    changes, the stream freed as soon as its client goes, and the end at the time limit."""
    await consul.kv_put(REQ + "ada", b"{}")
    await consul.kv_put(PAGE, page(waiting=["ada"]))
    async with intake(
        consul_server.address, api_settings(keepalive=0.2), stream_max_seconds=1.5
    ) as running:
        host, port = "127.0.0.1", running.port
        await eventually(lambda: running.front.cache.positions().get("ada") == 0)
        async with await anyio.connect_tcp(host, port) as sock:
            await sock.send(b"GET /api/v1/requests/ada/events HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            with anyio.fail_after(10):
                while b"0\r\n\r\n" not in received:  # the last chunk: ended by the limit
                    received += await sock.receive()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/event-stream; charset=utf-8" in head.lower()
        assert b"cache-control: no-cache" in head.lower()
        assert b"transfer-encoding: chunked" in head.lower()
        first = body.index(b"retry: 3000\n\nevent: status\ndata: {")
        assert body.count(b": keepalive\n\n") >= 3, body  # ~1.3 s idle, one each 0.2 s
        assert first < body.index(b": keepalive")
        await eventually(lambda: running.front.cache.streams == 0, timeout=5)

        # A client that goes away frees its stream at once (not at the next write).
        async with await anyio.connect_tcp(host, port) as sock:
            await sock.send(b"GET /api/v1/requests/ada/events HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(10):
                while b"event: status" not in await sock.receive():
                    pass
            assert running.front.cache.streams == 1
        await eventually(lambda: running.front.cache.streams == 0, timeout=1)


async def test_a_stalled_reader_holds_no_one_up(consul_server, consul) -> None:
    """A client that stops reading does not hold up another stream, and later reads the newest
    state."""
    users = [f"u{n}" for n in range(5)]
    for user in users:
        await consul.kv_put(REQ + user, b"{}")
    await consul.kv_put(PAGE, page(waiting=users))
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(base_url=base_url(running), timeout=20) as http,
    ):
        await eventually(lambda: len(running.front.cache.positions()) == len(users))
        async with await anyio.connect_tcp("127.0.0.1", running.port) as slow:
            await slow.send(b"GET /api/v1/requests/u4/events HTTP/1.1\r\nHost: x\r\n\r\n")
            async with http.stream("GET", "/api/v1/requests/u4/events") as response:
                events = read_events(response)
                with anyio.fail_after(15):
                    _, data = await anext(events)
                    while data.get("position") != 4:
                        _, data = await anext(events)
                    # The slow socket reads nothing while the line moves 30 times.
                    order = list(users)
                    for _ in range(30):
                        order = order[1:] + order[:1]
                        await consul.kv_put(PAGE, page(waiting=order))
                    final = order.index("u4")
                    while data.get("position") != final or data.get("waiting") != 5:
                        _, data = await anext(events)
            received = b""
            with anyio.fail_after(10):
                while f'"position":{final},'.encode() not in received.rpartition(b"event:")[2]:
                    received += await slow.receive()


async def test_hot_paths_answer_as_the_declared_routes(consul_server, consul) -> None:
    """A status read or stream opened through the hot path is the declared route's answer: two
    Authorization headers take the declared route (FastAPI), one the hot path; same bytes."""
    await consul.kv_put(REQ + "ada", b"{}")
    await consul.kv_put(PAGE, page(waiting=["bob", "ada"]))
    async with intake(consul_server.address) as running:
        await eventually(lambda: running.front.cache.positions().get("ada") is not None)

        async def raw(path: str, *headers: bytes, until: bytes | None = None) -> bytes:
            async with await anyio.connect_tcp("127.0.0.1", running.port) as sock:
                request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                await sock.send(request + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
                got = b""
                with anyio.fail_after(10):
                    while True:
                        got += await sock.receive()
                        head, _, body = got.partition(b"\r\n\r\n")
                        if until is not None and until in body:
                            return got
                        length = [
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ]
                        if length and len(body) >= length[0]:
                            return got

        async def counted(route: str) -> float:
            async with httpx.AsyncClient(base_url=base_url(running)) as http:
                text = (await http.get("/metrics")).text
            for line in text.splitlines():
                if line.startswith(
                    f'manticore_api_requests_total{{method="GET",route="{route}",status="200"}}'
                ):
                    return float(line.split()[-1])
            return 0.0

        before = await counted("/api/v1/requests/{user_id}")
        hot = await raw("/api/v1/requests/ada", b"Authorization: Bearer x")
        declared = await raw(
            "/api/v1/requests/ada", b"Authorization: Bearer x", b"Authorization: Bearer y"
        )
        assert hot.startswith(b"HTTP/1.1 200 OK\r\n")
        assert hot == declared
        assert await counted("/api/v1/requests/{user_id}") == before + 2
        assert b'"position":1' in hot

        # Refusals are the declared route's: an odd id, a missing request.
        assert (await raw("/api/v1/requests/a.b")).startswith(b"HTTP/1.1 422")
        missing = await raw("/api/v1/requests/nobody")
        assert missing.startswith(b"HTTP/1.1 404")
        assert b"no request for user nobody" in missing

        until = b'"position":1'
        hot = await raw("/api/v1/requests/ada/events?access_token=", until=until)
        declared = await raw("/api/v1/requests/ada/events?access_token=&access_token=", until=until)
        assert hot.startswith(b"HTTP/1.1 200 OK\r\n")
        assert hot == declared
        long_token = "/api/v1/requests/ada/events?access_token=" + "x" * 5000
        assert (await raw(long_token)).startswith(b"HTTP/1.1 422")


async def test_full_collections_are_the_instances_own_while_it_runs(consul_server) -> None:
    """While an instance runs, the interpreter starts no full collection (the instance does,
    between fan-outs); the thresholds come back when the last instance of the process stops."""
    before = gc.get_threshold()
    async with intake(consul_server.address):
        assert gc.get_threshold()[:2] == before[:2]
        assert gc.get_threshold()[2] >= 1_000_000
        async with intake(consul_server.address):
            assert gc.get_threshold()[2] >= 1_000_000
        assert gc.get_threshold()[2] >= 1_000_000
    assert gc.get_threshold() == before
