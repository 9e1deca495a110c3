"""The haproxy controller and a real HAProxy: users reach their own containers, nobody else's.

Each user's containers are the devstack's fake core and HMI (real processes), so an answer
through HAProxy names whose container produced it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import anyio
import pytest
from prometheus_client import REGISTRY

from controllers.haproxy.controller import HAProxyRouter
from controllers.settings import HAProxySettings
from reconciler.clients.consul import ConsulClient
from tests.integration.helpers import eventually, running

from .backends import OpenTCP, OpenWebSocket, containers, http_get, tcp_hello, websocket_hello
from .conftest import DOMAIN, host, user_routes

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reloads() -> float:
    return sum(
        metric("manticore_haproxy_reloads_total", reason=r)
        for r in ("start", "shape", "slots", "change", "periodic", "repair")
    )


async def get(settings: HAProxySettings, where: str, path: str = "/") -> tuple[int, str]:
    return await anyio.to_thread.run_sync(http_get, settings.main_port, where, path)


async def first_line(settings: HAProxySettings, where: str) -> str:
    try:
        status, body = await get(settings, where)
    except OSError:
        return ""
    return body.splitlines()[0] if status == 200 and body else f"status {status}"


async def settled_and_agreeing(router: HAProxyRouter, timeout: float = 15.0) -> None:
    """Files on disk and HAProxy's runtime state agree with what the controller applied.

    Checked once no change is pending, and again until a batch still being applied (the
    reconcile runs concurrently with this test) has finished; lasting drift fails after
    ``timeout`` with the differences found.
    """
    problems: list[str] = []

    async def agree() -> bool:
        nonlocal problems
        if metric("manticore_haproxy_pending_changes") != 0 or router.applied is None:
            return False
        problems = await anyio.to_thread.run_sync(router.applier.verify, router.applied)
        return not problems

    try:
        await eventually(agree, timeout=timeout, every=0.2)
    except TimeoutError:
        raise AssertionError(f"HAProxy drifted from what was applied: {problems}") from None


async def until(expected: object, fn, *args: object, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``await fn(*args) == expected``; fail with the last answer seen."""
    last: list[object] = []

    async def check() -> bool:
        last[:] = [await fn(*args)]
        return last[0] == expected

    try:
        await eventually(check, timeout=timeout, every=0.02)
    except TimeoutError:
        raise AssertionError(f"{fn.__name__}{args[1:]} stayed {last!r}, not {expected!r}") from None


async def core_of(port: int) -> str:
    return await anyio.to_thread.run_sync(tcp_hello, port)


async def put_basics(consul: ConsulClient, settings: HAProxySettings, webapp: str) -> None:
    await consul.kv_put("haproxy/domainName", DOMAIN.encode())
    await consul.kv_put("haproxy/mainPort", str(settings.main_port).encode())
    await consul.kv_put("haproxy/webAppAddresses/0", webapp.encode())


class Hammer:
    """Clients that keep requesting through HAProxy and count every failure.

    One repeats HTTP requests to a user's subdomain on fresh connections, one keeps a websocket
    open, one keeps a TCP session open and echoes through it.
    """

    def __init__(self, settings: HAProxySettings, hmi_host: str, tcp_port: int) -> None:
        self.settings = settings
        self.hmi_host = hmi_host
        self.tcp_port = tcp_port
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.session: OpenTCP | None = None
        self._threads = [threading.Thread(target=self._http, daemon=True)]

    def _http(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = http_get(self.settings.main_port, self.hmi_host, timeout=5)
                if status == 200 and body.startswith("hmi "):
                    self.ok += 1
                else:
                    self.failures.append(f"{status} {body[:40]!r}")
            except OSError as exc:
                self.failures.append(repr(exc))

    def start(self) -> Hammer:
        self.session = OpenTCP(self.tcp_port)
        for thread in self._threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)
        assert self.session is not None
        self.session.close()


@pytest.fixture
async def router(
    consul_server, haproxy_settings: HAProxySettings
) -> AsyncIterator[tuple[HAProxyRouter, ConsulClient]]:
    router = HAProxyRouter(config=haproxy_settings)
    async with running([router.declaration(tick=0.2)], consul_server.address) as (_, consul):
        yield router, consul


async def test_users_reach_their_own_containers_only(router, haproxy_settings) -> None:
    router_, consul = router
    settings: HAProxySettings = haproxy_settings
    ports = settings.tcp_port_range
    with containers("alice", "bob", "webapp") as c:
        await put_basics(consul, settings, c["webapp"].hmi)
        await consul.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
        await consul.kv_put("haproxy/data/bob", user_routes(c["bob"], ports[1]))
        await until("hmi bob", first_line, settings, host("bob"), timeout=20)

        # HTTP by Host header (any case, with or without the port).
        assert await first_line(settings, host("alice")) == "hmi alice"
        assert await first_line(settings, f"{host('alice').upper()}:{settings.main_port}") == (
            "hmi alice"
        )
        assert await first_line(settings, host("alice", "broker")) == "broker alice"
        # A websocket through the same frontend, to the HMI and to the broker (relayed to core).
        ws = await anyio.to_thread.run_sync(websocket_hello, settings.main_port, host("alice"))
        assert ws == (101, "hmi alice", "ping")
        ws = await anyio.to_thread.run_sync(
            websocket_hello, settings.main_port, host("bob", "broker")
        )
        assert (ws[0], ws[1].strip()) == (101, "core bob")
        # TCP by external port, to each user's own core.
        assert await core_of(ports[0]) == "core alice"
        assert await core_of(ports[1]) == "core bob"
        # Nobody else's: an unknown subdomain is the 404 page, an unrouted port is refused,
        # a near miss of a real subdomain is unknown too.
        status, body = await get(settings, f"{'z' * 16}.{DOMAIN}")
        assert status == 404
        assert "no session" in body.lower()
        assert (await get(settings, host("alice") + ".evil.example"))[0] == 404
        assert (await get(settings, "x" + host("alice")))[0] == 404
        assert await core_of(ports[2]) == ""
        # The web app on the bare domain; the load balancer's health check on any host.
        assert await first_line(settings, DOMAIN) == "hmi webapp"
        assert (await get(settings, "anything", "/haproxy"))[0] == 200

        assert router_.applied is not None
        await settled_and_agreeing(router_)


async def test_users_come_and_go_without_a_reload_and_open_sessions_stay_up(
    router, haproxy_settings
) -> None:
    router_, consul = router
    settings: HAProxySettings = haproxy_settings
    ports = settings.tcp_port_range
    with containers("alice", "bob", "carol", "webapp") as c:
        await put_basics(consul, settings, c["webapp"].hmi)
        await consul.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
        await until("hmi alice", first_line, settings, host("alice"), timeout=20)
        before = reloads()
        hammer = await anyio.to_thread.run_sync(
            lambda: Hammer(settings, host("alice"), ports[0]).start()
        )
        websocket = await anyio.to_thread.run_sync(OpenWebSocket, settings.main_port, host("alice"))
        assert websocket.hello == "hmi alice"
        try:
            for round_ in range(3):
                await consul.kv_put("haproxy/data/bob", user_routes(c["bob"], ports[1]))
                await consul.kv_put("haproxy/data/carol", user_routes(c["carol"], ports[2]))
                await until("hmi carol", first_line, settings, host("carol"), timeout=10)
                assert await core_of(ports[1]) == "core bob"
                await consul.kv_delete("haproxy/data/bob")
                await until("status 404", first_line, settings, host("bob"), timeout=10)
                assert await core_of(ports[1]) == ""
                assert await first_line(settings, host("carol")) == "hmi carol", round_
                await consul.kv_delete("haproxy/data/carol")
                await until("status 404", first_line, settings, host("carol"), timeout=10)
            assert hammer.session is not None
            assert await anyio.to_thread.run_sync(hammer.session.echo, "still here") == (
                "still here"
            )
            assert await anyio.to_thread.run_sync(websocket.echo, "and here") == "and here"
        finally:
            await anyio.to_thread.run_sync(hammer.finish)
            websocket.close()
        assert reloads() == before, "users coming and going must not reload HAProxy"
        assert metric("manticore_haproxy_runtime_updates_total", op="map-add") >= 6
        assert hammer.failures == []
        assert hammer.ok > 10
        assert router_.applied is not None
        await settled_and_agreeing(router_)


async def test_hostile_values_are_reported_never_used_and_cost_nobody_else(
    router, haproxy_settings
) -> None:
    router_, consul = router
    settings: HAProxySettings = haproxy_settings
    ports = settings.tcp_port_range

    def invalid(kind: str) -> float:
        return metric("reconciler_invalid_input_total", controller="haproxy", kind=kind)

    before = {k: invalid(k) for k in ("schema", "malformed-json", "conflict", "domain", "key")}
    with containers("webapp", "alice", "bob") as c:
        await put_basics(consul, settings, c["webapp"].hmi)
        await consul.kv_put("haproxy/data/alice", user_routes(c["alice"], ports[0]))
        await until("hmi alice", first_line, settings, host("alice"), timeout=20)
        injection = (
            b'{"http": [{"subdomain": "evilevilevilevil\\n    bind *:1", '
            b'"address": "127.0.0.1:1", "role": "hmi"}], "tcp": []}'
        )
        await consul.kv_put("haproxy/data/mallory", injection)
        await consul.kv_put("haproxy/data/broken", b"{not json")
        # Bob claims Alice's subdomain and port: Alice keeps them, Bob's routes are refused.
        stolen = user_routes(c["alice"], ports[0]).replace(
            c["alice"].hmi.encode(), c["bob"].hmi.encode()
        )
        stolen = stolen.replace(c["alice"].core.encode(), c["bob"].core.encode())
        await consul.kv_put("haproxy/data/bob", stolen)
        await consul.kv_put("haproxy/domainName", b"manticore.test\n    bind *:2")
        await consul.kv_put("haproxy/data/a.b", b"{}")
        await eventually(lambda: invalid("conflict") > before["conflict"], timeout=10)
        await eventually(lambda: invalid("schema") > before["schema"], timeout=10)
        assert invalid("malformed-json") > before["malformed-json"]
        assert invalid("domain") > before["domain"]
        await eventually(lambda: invalid("key") > before["key"], timeout=10)
        assert await first_line(settings, host("alice")) == "hmi alice"
        assert await core_of(ports[0]) == "core alice"
        config = await anyio.Path(settings.config_dir / "haproxy.cfg").read_text()
        assert "evil" not in config
        assert "bind *" not in config
        assert metric("manticore_haproxy_config_valid") == 1
        assert router_.applied is not None
        assert router_.applied.routing.users() == {"alice"}
