"""Many open event streams share the same watches: Consul connections do not grow with them."""

from __future__ import annotations

import anyio
import httpx
import psutil
import pytest

from reconciler.clients.consul import ConsulClient
from tests.integration.frontdoor.helpers import PAGE, REQ, base_url, intake, page, read_events
from tests.integration.helpers import clients_config, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]

USERS = 60
STREAMS_PER_USER = 5  # 300 streams


def consul_connections(port: int) -> int:
    """Established TCP connections of this process to Consul's port (client side)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.timeout(180)
async def test_300_streams_cost_no_more_consul_connections_than_one(consul_server) -> None:
    port = int(consul_server.address.rsplit(":", 1)[1])
    users = [f"u{n}" for n in range(USERS)]
    async with ConsulClient(clients_config(consul_server.address).consul) as consul:
        for user in users:
            await consul.kv_put(REQ + user, b"{}")
        await consul.kv_put(PAGE, page(waiting=users))
    # The writes above are done and their client closed: what remains is the API's.
    async with (
        intake(consul_server.address) as running,
        httpx.AsyncClient(
            base_url=base_url(running),
            timeout=60,
            limits=httpx.Limits(max_connections=USERS * STREAMS_PER_USER + 10),
        ) as http,
        anyio.create_task_group() as tg,
    ):
        got: dict[int, list[dict]] = {}
        opened = 0

        async def watch(n: int, user: str) -> None:
            nonlocal opened
            async with http.stream("GET", f"/api/v1/requests/{user}/events") as response:
                assert response.status_code == 200
                opened += 1
                async for _event, data in read_events(response):
                    got.setdefault(n, []).append(data)

        tg.start_soon(watch, 0, users[0])
        await eventually(lambda: running.front.cache.streams == 1, timeout=30)
        with_one = consul_connections(port)
        for n, user in enumerate(users * STREAMS_PER_USER):
            if n:
                tg.start_soon(watch, n, user)
        total = USERS * STREAMS_PER_USER
        await eventually(lambda: running.front.cache.streams == total, timeout=60)
        await eventually(lambda: len(got) == total, timeout=60)
        with_all = consul_connections(port)
        # Five long polls plus at most the short pool (6); the same with 1 stream or 300.
        assert with_all <= 11, with_all
        assert with_all <= with_one + 1, (with_one, with_all)

        # One change reaches every stream: the first user leaves, everyone moves up.
        async with ConsulClient(clients_config(consul_server.address).consul) as consul:
            await consul.kv_put(PAGE, page(waiting=users[1:]))
            await consul.kv_delete(REQ + users[0])

        def moved() -> bool:
            for n, events in got.items():
                user = users[n % USERS]
                last = events[-1]
                if user == users[0]:
                    if last.get("state") != "ended":
                        return False
                elif last.get("position") != users.index(user) - 1:
                    return False
            return True

        await eventually(moved, timeout=60)
        assert running.front.cache.streams == total - STREAMS_PER_USER
        tg.cancel_scope.cancel()
