"""The whole way on the devstack: a request becomes a Nomad job whose fake core and HMI really
run, passing services, routes from haproxy-kv, and the haproxy controller routing real traffic
through the real HAProxy to that user's containers, and nobody else's; a departure takes the
route away again.

The embedded Consul and Nomad (the devstack's raw_exec job template, so every user's fakes are
real processes), the waitlist, jobs, allocations, haproxy-kv and haproxy controllers in one
manager.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from controllers import allocations, haproxy_kv, jobs, waitlist
from controllers.api.ids import HAPROXY_DATA_PREFIX, REQUESTS_PREFIX
from controllers.haproxy.controller import HAProxyRouter
from controllers.settings import Settings
from controllers.templates import JobTemplate
from devstack.fakes import RAW_EXEC_TEMPLATE, job_settings_env
from devstack.nomad.embedded import EmbeddedNomad
from devstack.nomad.testing import start_embedded_nomad
from reconciler.clients.consul import ConsulClient
from tests.integration.helpers import eventually, running

from .backends import tcp_hello, websocket_hello
from .conftest import haproxy_env
from .test_routing import core_of, first_line, metric, until

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]

PER = JobTemplate.load(RAW_EXEC_TEMPLATE, variables={"python": "x"}).resources


@pytest.fixture
def nomad(consul_server: Any) -> Iterator[EmbeddedNomad]:
    server = start_embedded_nomad(nodes=1, node_cpu=PER.cpu * 3 + 20, consul_addr=consul_server.url)
    try:
        yield server
    finally:
        server.stop()


async def routes_of(consul: ConsulClient, user: str) -> dict[str, Any] | None:
    _, entry = await consul.kv_get(f"{HAPROXY_DATA_PREFIX}{user}")
    return None if entry is None or entry.value is None else dict(json.loads(entry.value))


async def test_users_reach_their_own_containers_through_the_whole_pipeline(
    consul_server: Any, nomad: EmbeddedNomad, tmp_path: Path, haproxy_dirs: list[Path]
) -> None:
    env = {**haproxy_env(tmp_path / "haproxy"), **job_settings_env()}
    haproxy_dirs.append(tmp_path / "haproxy")
    settings = Settings.from_env(env)
    router = HAProxyRouter(config=settings.haproxy)
    controllers = [
        waitlist.build(settings),
        jobs.build(settings),
        allocations.controller,
        haproxy_kv.build(settings.haproxy),
        router.declaration(tick=0.2),
    ]
    config = settings.haproxy
    async with running(controllers, consul_server.address, nomad_address=nomad.url) as (
        manager,
        consul,
    ):
        await eventually(lambda: manager.ready, timeout=30)
        for user in ("ada", "bob"):
            await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")
        routes: dict[str, dict[str, Any]] = {}
        for user in ("ada", "bob"):
            routes[user] = await eventually(lambda u=user: routes_of(consul, u), timeout=60)
        starts = metric("manticore_haproxy_reloads_total", reason="start")
        grown = metric("manticore_haproxy_reloads_total", reason="slots")

        def host(user: str, role: str) -> str:
            (route,) = [r for r in routes[user]["http"] if r["role"] == role]
            return f"{route['subdomain']}.{config.domain_name}"

        for user, other in (("ada", "bob"), ("bob", "ada")):
            await until(f"hmi {user}", first_line, config, host(user, "hmi"), timeout=30)
            (tcp,) = routes[user]["tcp"]
            assert await core_of(tcp["port"]) == f"core {user}"
            status, hello, _ = await anyio.to_thread.run_sync(
                websocket_hello, config.main_port, host(user, "broker")
            )
            # The broker relays to the user's own core: HMI -> HAProxy -> broker -> core.
            assert (status, hello.strip()) == (101, f"core {user}")
            assert other not in await first_line(config, host(user, "hmi"))

        # bob leaves: his subdomains and his port go; ada's stay.
        bob_port = routes["bob"]["tcp"][0]["port"]
        await consul.kv_delete(f"{REQUESTS_PREFIX}bob")
        await until("status 404", first_line, config, host("bob", "hmi"), timeout=60)
        assert await anyio.to_thread.run_sync(tcp_hello, bob_port) == ""
        assert await first_line(config, host("ada", "hmi")) == "hmi ada"
        # Arrivals and departures cost no reload beyond the first start.
        assert metric("manticore_haproxy_reloads_total", reason="start") == starts
        assert metric("manticore_haproxy_reloads_total", reason="slots") == grown
