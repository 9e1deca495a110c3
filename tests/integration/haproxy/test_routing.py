"""The haproxy controller and a real HAProxy: users reach their own containers, nobody else's."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import REGISTRY

from controllers.haproxy.controller import HAProxyRouter
from controllers.settings import HAProxySettings
from tests.integration.helpers import eventually, running

from .backends import OpenTCP, containers, http_get, tcp_hello, websocket_hello
from .conftest import DOMAIN, subdomain, user_routes

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def get(settings: HAProxySettings, host: str, path: str = "/") -> tuple[int, str]:
    return await anyio.to_thread.run_sync(http_get, settings.main_port, host, path)


async def answers(settings: HAProxySettings, host: str, expected: str) -> bool:
    try:
        return (await get(settings, host))[1] == expected
    except OSError:
        return False


async def status_is(settings: HAProxySettings, host: str, expected: int) -> bool:
    try:
        return (await get(settings, host))[0] == expected
    except OSError:
        return False


async def test_users_reach_their_own_containers_only(
    consul_server, haproxy_settings: HAProxySettings
) -> None:
    settings = haproxy_settings
    ports = settings.tcp_port_range
    router = HAProxyRouter(config=settings)
    with containers("alice", "bob", "carol", "webapp") as c:
        async with running([router.declaration(tick=0.5)], consul_server.address) as (_, consul):
            await consul.kv_put("haproxy/domainName", DOMAIN.encode())
            await consul.kv_put("haproxy/mainPort", str(settings.main_port).encode())
            await consul.kv_put("haproxy/webAppAddresses/0", c["webapp"].hmi.encode())
            for i, user in enumerate(("alice", "bob")):
                await consul.kv_put(
                    f"haproxy/data/{user}",
                    user_routes(user, hmi=c[user].hmi, core=c[user].core, port=ports[i]),
                )
            alice, bob = f"{subdomain('alice')}.{DOMAIN}", f"{subdomain('bob')}.{DOMAIN}"
            await eventually(lambda: answers(settings, alice, "hmi:alice"), timeout=20)
            reloads = metric("manticore_haproxy_reloads_total", reason="start")
            assert reloads >= 1

            # HTTP by Host header (any case, with a port), websocket, TCP by port.
            assert await get(settings, bob) == (200, "hmi:bob")
            assert await get(settings, f"{alice.upper()}:{settings.main_port}") == (
                200,
                "hmi:alice",
            )
            status, first, echo = await anyio.to_thread.run_sync(
                websocket_hello, settings.main_port, alice
            )
            assert (status, first, echo) == (101, "hmi:alice", "ping")
            assert await anyio.to_thread.run_sync(tcp_hello, ports[0]) == "core:alice"
            assert await anyio.to_thread.run_sync(tcp_hello, ports[1]) == "core:bob"
            # Nobody else's: an unknown subdomain is the 404 page, an unrouted port refused.
            status, body = await get(settings, f"{'z' * 16}.{DOMAIN}")
            assert status == 404
            assert "no session" in body.lower()
            assert await anyio.to_thread.run_sync(tcp_hello, ports[2]) == ""
            # The web app at the bare domain, the load balancer's health check anywhere.
            assert await get(settings, DOMAIN) == (200, "hmi:webapp")
            assert (await get(settings, "anything", "/haproxy"))[0] == 200

            # Users come and go over the runtime API: no reload, and an open session stays up.
            session = await anyio.to_thread.run_sync(OpenTCP, ports[0])
            assert session.hello == "core:alice"
            updates = metric("manticore_haproxy_runtime_updates_total", op="map-add")
            await consul.kv_put(
                "haproxy/data/carol",
                user_routes("carol", hmi=c["carol"].hmi, core=c["carol"].core, port=ports[2]),
            )
            carol = f"{subdomain('carol')}.{DOMAIN}"
            await eventually(lambda: answers(settings, carol, "hmi:carol"), timeout=10)
            assert await anyio.to_thread.run_sync(tcp_hello, ports[2]) == "core:carol"
            await consul.kv_delete("haproxy/data/bob")
            await eventually(lambda: status_is(settings, bob, 404), timeout=10)
            assert await anyio.to_thread.run_sync(tcp_hello, ports[1]) == ""
            assert metric("manticore_haproxy_runtime_updates_total", op="map-add") >= updates + 2
            assert metric("manticore_haproxy_reloads_total", reason="start") == reloads
            assert await anyio.to_thread.run_sync(session.echo, "still here") == "still here"
            session.close()

            # What runs and what is on disk agree.
            assert router.applied is not None
            assert await anyio.to_thread.run_sync(router.applier.verify, router.applied) == []
