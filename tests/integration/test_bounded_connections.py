"""A watch over a thousand services costs a fixed number of Consul connections, and never delays
writes or session renewals (regression: one long poll per service exhausted the client's pool,
so fenced writes and renewals timed out and leadership was lost at about a hundred users)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable

import anyio
import httpx
import psutil
import pytest

from reconciler.clients.consul import ConsulClient
from reconciler.sources import Change, ServiceHealthSource
from tests.integration.helpers import clients_config, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]

SERVICES = 1000


async def register_many(url: str, count: int, *, status: str = "passing") -> None:
    """``count`` services (one instance and one check each) through the catalog API."""
    limiter = anyio.CapacityLimiter(16)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:

        async def one(i: int) -> None:
            body = {
                "Node": f"node-{i % 10}",
                "Address": f"10.0.0.{i % 10 + 1}",
                "Service": {
                    "ID": f"core-hmi-u{i}-hmi",
                    "Service": f"core-hmi-u{i}-hmi",
                    "Port": 20000 + i,
                    "Meta": {"manticore_user": f"u{i}"},
                },
                "Check": {
                    "CheckID": f"check-u{i}",
                    "Name": "alive",
                    "Status": status,
                    "ServiceID": f"core-hmi-u{i}-hmi",
                },
            }
            async with limiter:
                resp = await http.put("/v1/catalog/register", json=body)
            assert resp.status_code == 200, resp.text

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)


def client_connections(port: int) -> int:
    """Sockets this process holds *to* Consul (the server runs in-process too: skip its side)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.laddr.port != port
    )


async def test_1000_services_two_long_polls_and_prompt_writes_and_renewals(consul_server) -> None:
    await register_many(consul_server.url, SERVICES)
    config = clients_config(consul_server.address).consul
    port = int(consul_server.address.rsplit(":", 1)[1])
    seen: list[Change] = []

    def emit(changes: Iterable[Change]) -> None:
        seen.extend(changes)

    async with ConsulClient(config) as client, anyio.create_task_group() as tg:
        session = await client.session_create("bounded-test", ttl=10, node_checks=[])
        source = ServiceHealthSource(client, pattern=r"core-hmi-.*", wait=30.0)
        tg.start_soon(functools.partial(source.run, emit, controller="bounded"))
        with anyio.fail_after(60):
            await source.wait_ready()
        assert len(source.items()) == SERVICES
        assert {i.meta["manticore_user"] for i in source.items().values()} == {
            f"u{i}" for i in range(SERVICES)
        }

        # Churn: every check flips (in-process, so the only sockets to Consul are the client's)
        # while a write and a renewal go through the same client.
        churn = anyio.Event()

        async def flip_all() -> None:
            for i in range(SERVICES):
                assert consul_server.force_check(f"check-u{i}", "critical", node=f"node-{i % 10}")
                if i % 50 == 0:
                    await anyio.sleep(0.01)
            churn.set()

        tg.start_soon(flip_all)
        write_times: list[float] = []
        renew_times: list[float] = []
        peak = 0
        while not churn.is_set() or any(i.passing for i in source.items().values()):
            started = time.perf_counter()
            assert await client.kv_put("bounded/probe", str(started).encode())
            write_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.session_renew(session)
            renew_times.append(time.perf_counter() - started)
            peak = max(peak, client_connections(port))
            await anyio.sleep(0.02)
        await eventually(lambda: all(not i.passing for i in source.items().values()), timeout=60)

        # Two long polls (catalog + health of every service) plus the small short-request pool.
        assert peak <= 2 + 5, peak
        # A status change is read from the health poll itself: no read per service.
        assert source.reads <= 10 + 1, source.reads  # one per node at start
        assert client_connections(port) <= 7
        # Exactly two parked at once: between a wake and its re-issue only one may be parked.
        await eventually(lambda: consul_server.stats()["BlockingQueries"] == 2, timeout=10)
        assert consul_server.stats()["BlockingQueries"] <= 2
        # Prompt: never stuck behind long polls or the refresh reads (generous for a loaded CI).
        assert max(write_times) < 2.0, max(write_times)
        assert max(renew_times) < 2.0, max(renew_times)
        assert write_times
        assert renew_times
        tg.cancel_scope.cancel()
