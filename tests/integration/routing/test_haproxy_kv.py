"""haproxy-kv end to end on the embedded Consul: reservations, routes, web app, globals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from controllers import haproxy_kv
from controllers.api.haproxy import ROUTES_DATA_PREFIX, ROUTES_TCP_PREFIX
from controllers.api.ids import ALLOCATIONS_PREFIX, HAPROXY_DATA_PREFIX, REQUESTS_PREFIX
from controllers.settings import HAProxySettings
from reconciler.clients.consul import ConsulClient, KVOp
from tests.integration.helpers import eventually, running
from tests.integration.routing.helpers import (
    Services,
    metric,
    read_json,
    read_text,
    with_frozen_watch,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def config(start: int = 20000, end: int = 20099, **extra: Any) -> HAProxySettings:
    return HAProxySettings.model_validate(
        {
            "DOMAIN_NAME": "manticore.test",
            "HAPROXY_HTTP_LISTEN": 8080,
            "TCP_PORT_RANGE_START": start,
            "TCP_PORT_RANGE_END": end,
            **extra,
        }
    )


def allocation(user: str, address: str = "10.0.0.5", alloc: str | None = None) -> bytes:
    return json.dumps(
        {
            "services": {
                "hmi": {"address": address, "port": 21000, "route": "http"},
                "broker": {"address": address, "port": 21001, "route": "http"},
                "core": {"address": address, "port": 21002, "route": "tcp"},
                "file": {"address": address, "port": 21003, "route": "none"},
            },
            "job": f"core-hmi-{user}",
            "allocation": alloc or "3a1f9d3e-1111-4222-8333-444455556666",
            "node": "node-1",
        }
    ).encode()


async def arrive(consul: ConsulClient, *users: str, address: str = "10.0.0.5") -> None:
    """Requests and allocation records, as the intake API and allocations would write them."""
    ops: list[KVOp] = []
    for user in users:
        ops.append(KVOp.set(f"{REQUESTS_PREFIX}{user}", b"{}"))
        ops.append(KVOp.set(f"{ALLOCATIONS_PREFIX}{user}", allocation(user, address)))
    for start in range(0, len(ops), 64):
        await consul.txn(ops[start : start + 64])


async def leave(consul: ConsulClient, *users: str) -> None:
    for user in users:
        await consul.kv_delete(f"{REQUESTS_PREFIX}{user}")
        await consul.kv_delete(f"{ALLOCATIONS_PREFIX}{user}")


async def routes_of(consul: ConsulClient, user: str) -> Any:
    return await read_json(consul, f"{HAPROXY_DATA_PREFIX}{user}")


async def claims(consul: ConsulClient) -> dict[str, str]:
    _, entries = await consul.kv_list("manticore/routes/")
    return {e.key: e.text for e in entries if not e.key.startswith(ROUTES_DATA_PREFIX)}


@pytest.fixture
def services(consul_server) -> Iterator[Services]:
    registry = Services(consul_server.url)
    yield registry
    registry.close()


async def test_a_user_gets_routes_that_survive_moves_and_restarts_and_go_on_departure(
    consul_server,
) -> None:
    controller = haproxy_kv.build(config())
    async with running([controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await arrive(consul, "ada")
        routes = await eventually(lambda: routes_of(consul, "ada"))
        assert [(r["role"], r["address"]) for r in routes["http"]] == [
            ("broker", "10.0.0.5:21001"),
            ("hmi", "10.0.0.5:21000"),
        ]
        (tcp,) = routes["tcp"]
        assert (tcp["role"], tcp["address"]) == ("core", "10.0.0.5:21002")
        assert 20000 <= tcp["port"] <= 20099
        reservation = await read_json(consul, f"{ROUTES_DATA_PREFIX}ada")
        assert reservation["tcp_ports"] == {"core": tcp["port"]}
        assert {r["subdomain"] for r in routes["http"]} == set(reservation["subdomains"].values())
        assert await claims(consul) == {
            f"{ROUTES_TCP_PREFIX}{tcp['port']}": "ada",
            **{
                f"manticore/routes/subdomains/{s}": "ada"
                for s in reservation["subdomains"].values()
            },
        }
        assert await read_text(consul, "haproxy/domainName") == "manticore.test"
        assert await read_text(consul, "haproxy/mainPort") == "8080"

        # The allocation moves: new addresses, same subdomains and port.
        await arrive(consul, "ada", address="10.0.0.9")

        async def moved() -> bool:
            now = await routes_of(consul, "ada")
            return now is not None and now["tcp"][0]["address"] == "10.0.0.9:21002"

        await eventually(moved)
        now = await routes_of(consul, "ada")
        assert now["tcp"][0]["port"] == tcp["port"]
        assert [r["subdomain"] for r in now["http"]] == [r["subdomain"] for r in routes["http"]]

        # The allocation goes (a restart): no routes, the reservation stays.
        await consul.kv_delete(f"{ALLOCATIONS_PREFIX}ada")
        await eventually(lambda: _none(routes_of(consul, "ada")))
        assert await read_json(consul, f"{ROUTES_DATA_PREFIX}ada") == reservation

    # A new process (a new leader) keeps the reservation too.
    async with running([haproxy_kv.build(config())], consul_server.address, identity="b") as (
        manager,
        consul,
    ):
        await arrive(consul, "ada")
        again = await eventually(lambda: routes_of(consul, "ada"))
        assert again["tcp"][0]["port"] == tcp["port"]
        # Departure removes everything the user held.
        await leave(consul, "ada")
        await eventually(lambda: _none(routes_of(consul, "ada")))
        await eventually(lambda: _none(read_json(consul, f"{ROUTES_DATA_PREFIX}ada")))
        await eventually(lambda: _empty(claims(consul)))


async def test_a_record_that_comes_before_the_requests_watch_shows_the_request_is_routed(
    consul_server,
) -> None:
    """The requests watch re-reads at most every 2 s; a user whose allocation record comes
    first is routed at once (one read of the request), not held back until it catches up."""
    controller = with_frozen_watch(haproxy_kv.build(config()), haproxy_kv.REQUESTS_WATCH)
    async with running([controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await arrive(consul, "ada")
        routes = await eventually(lambda: routes_of(consul, "ada"), timeout=10)
        assert [r["role"] for r in routes["tcp"]] == ["core"]
        assert (
            f"{REQUESTS_PREFIX}ada"
            not in manager.runners["haproxy-kv"].sources[haproxy_kv.REQUESTS_WATCH].items()
        )


async def test_web_app_addresses_follow_the_passing_instances_atomically(
    consul_server, services: Services
) -> None:
    async with running([haproxy_kv.build(config())], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        services.register_web_app("web-2", "10.0.1.2", 4000)
        services.register_web_app("web-1", "10.0.1.1", 4000)

        async def listed() -> dict[str, str]:
            _, entries = await consul.kv_list("haproxy/webAppAddresses/")
            return {e.key.rsplit("/", 1)[1]: e.text for e in entries}

        await eventually(lambda: _equals(listed(), {"0": "10.0.1.1:4000", "1": "10.0.1.2:4000"}))
        services.http.put("/v1/agent/check/fail/check:web-1").raise_for_status()
        await eventually(lambda: _equals(listed(), {"0": "10.0.1.2:4000"}))
        await eventually(lambda: metric("manticore_web_app_addresses") == 1, timeout=30)
        # A stray key under the prefix is removed; a tampered global is put back.
        await consul.kv_put("haproxy/webAppAddresses/stray", b"1.2.3.4:5")
        await consul.kv_put("haproxy/domainName", b"evil.example")
        await eventually(lambda: _equals(listed(), {"0": "10.0.1.2:4000"}))
        await eventually(lambda: _equals(read_text(consul, "haproxy/domainName"), "manticore.test"))


async def test_an_exhausted_port_range_is_reported_and_others_keep_their_ports(
    consul_server,
) -> None:
    exhausted_before = metric("manticore_tcp_port_exhausted_total")
    async with running([haproxy_kv.build(config(20000, 20001))], consul_server.address) as (
        manager,
        consul,
    ):
        await eventually(lambda: manager.ready)
        await arrive(consul, "ada", "bob")
        await eventually(lambda: _all_tcp(consul, ["ada", "bob"]))
        await arrive(consul, "carol")
        carol = await eventually(lambda: routes_of(consul, "carol"))
        assert carol["tcp"] == []
        assert len(carol["http"]) == 2

        status = await eventually(lambda: read_json(consul, "reconciler/status/haproxy-kv/carol"))
        assert status["phase"] == "NoTCPPort"
        assert "20000-20001 is exhausted" in status["message"]
        assert metric("manticore_tcp_port_exhausted_total") > exhausted_before
        await eventually(lambda: metric("manticore_users_waiting_for_tcp_port") == 1, timeout=30)
        ada_port = (await routes_of(consul, "ada"))["tcp"][0]["port"]
        bob_port = (await routes_of(consul, "bob"))["tcp"][0]["port"]
        assert {ada_port, bob_port} == {20000, 20001}

        # ada leaves: her port is freed and carol gets it; the status entry goes.
        await leave(consul, "ada")
        await eventually(lambda: _all_tcp(consul, ["carol"]), timeout=30)
        assert (await routes_of(consul, "carol"))["tcp"][0]["port"] == ada_port
        assert (await routes_of(consul, "bob"))["tcp"][0]["port"] == bob_port
        await eventually(lambda: _none(read_json(consul, "reconciler/status/haproxy-kv/carol")))


async def test_ports_stay_unique_with_many_workers_and_a_leader_change(consul_server) -> None:
    """40 users at once on a range of exactly 40 ports, four workers, and the leader stopped
    half way: every user gets a port, no port twice, claims and reservations agree."""
    users = [f"user-{i}" for i in range(40)]
    cfg = config(20000, 20039)
    async with running([haproxy_kv.build(cfg)], consul_server.address, identity="a") as (
        first,
        consul,
    ):
        await eventually(lambda: first.runners["haproxy-kv"].is_leader)
        async with running([haproxy_kv.build(cfg)], consul_server.address, identity="b") as (
            second,
            _,
        ):
            await eventually(lambda: second.ready)
            await arrive(consul, *users[:20])
            await anyio.sleep(0.05)
            await arrive(consul, *users[20:])
            await anyio.sleep(0.2)
            first.stop()
            await eventually(lambda: second.runners["haproxy-kv"].is_leader, timeout=20)
            await eventually(lambda: _all_tcp(consul, users), timeout=60)

            ports = [(await routes_of(consul, u))["tcp"][0]["port"] for u in users]
            assert sorted(ports) == list(range(20000, 20040))
            held = await claims(consul)
            for user, port in zip(users, ports, strict=True):
                assert held[f"{ROUTES_TCP_PREFIX}{port}"] == user
                reservation = await read_json(consul, f"{ROUTES_DATA_PREFIX}{user}")
                assert reservation["tcp_ports"] == {"core": port}
            subdomains = [k for k in held if k.startswith("manticore/routes/subdomains/")]
            assert len(subdomains) == len(set(subdomains)) == 80


async def _none(value: Any) -> bool:
    return (await value) is None


async def _empty(value: Any) -> bool:
    return not await value


async def _equals(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def _all_tcp(consul: ConsulClient, users: list[str]) -> bool:
    for user in users:
        routes = await routes_of(consul, user)
        if routes is None or len(routes["tcp"]) != 1:
            return False
    return True


class StaleView:
    """What a reconcile sees, with a routes cache that has not caught up with Consul.

    Everything else is real: the KV store writes through the framework's fenced writer (without
    an elector) to the embedded Consul, so Consul alone decides which claim wins.
    """

    def __init__(self, consul: ConsulClient, caches: dict[str, dict[str, Any]]) -> None:
        from reconciler.kv import KVStore
        from reconciler.leader import FencedKV
        from reconciler.logging import get_logger

        self.kv = KVStore(consul, FencedKV(consul, "haproxy-kv-test"))
        self.caches = caches
        self.log = get_logger("tests.haproxy-kv")

    def cache(self, name: str) -> dict[str, Any]:
        return self.caches.get(name, {})

    def index(self, watch: str, name: str, value: str) -> list[Any]:
        functions = {
            (haproxy_kv.ROUTES_WATCH, haproxy_kv.OWNER_INDEX): haproxy_kv._claim_owner,
            (haproxy_kv.HAPROXY_WATCH, haproxy_kv.KIND_INDEX): haproxy_kv._haproxy_kind,
        }
        fn = functions[(watch, name)]
        return [e for e in self.cache(watch).values() if value in fn(e)]

    def parse(self, model: Any, entry: Any, **_: Any) -> Any:
        from reconciler.kv import decode

        return decode(model, entry.value, key=entry.key)


async def test_a_claim_the_cache_has_not_seen_is_refused_by_consul_not_duplicated(
    consul_server,
) -> None:
    """The port looks free to this replica (its cache lags), but another user holds it."""
    from controllers.api.allocations import UserAllocation
    from reconciler.clients.config import ClientsConfig

    clients = ClientsConfig.from_env({"CONSUL_HTTP_ADDR": consul_server.address})
    async with ConsulClient(clients.consul) as consul:
        await consul.kv_put(f"{ROUTES_TCP_PREFIX}20000", b"ghost")
        conflicts = metric("manticore_route_reservation_conflicts_total")
        state = haproxy_kv.HAProxyKV(config(20000, 20001))
        view = StaleView(consul, {haproxy_kv.ROUTES_WATCH: {}})  # sees no claim at all
        alloc = UserAllocation.model_validate_json(allocation("ada"))
        plan = await state.reserve(view, "ada", alloc)  # type: ignore[arg-type]
        assert plan is not None
        # Whatever it picked first, ada ends on the one port nobody holds.
        assert plan.reservation.tcp_ports == {"core": 20001}
        _, ghost = await consul.kv_get(f"{ROUTES_TCP_PREFIX}20000")
        assert ghost is not None
        assert ghost.text == "ghost"
        _, mine = await consul.kv_get(f"{ROUTES_TCP_PREFIX}20001")
        assert mine is not None
        assert mine.text == "ada"

        # Range full as far as Consul knows, still free as far as the stale cache knows.
        bob = await state.reserve(view, "bob", alloc)  # type: ignore[arg-type]
        assert bob is not None
        assert bob.exhausted == ("core",)
        assert bob.reservation.tcp_ports == {}
        assert metric("manticore_route_reservation_conflicts_total") >= conflicts + 1
        reservation = await read_json(consul, f"{ROUTES_DATA_PREFIX}bob")
        assert reservation["tcp_ports"] == {}


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (b"{not json", "malformed-json"),
        (
            b'{"services": {"hmi": {"address": "10.0.0.1 ; rm", "port": 1, "route": "http"}}}',
            "schema",
        ),
    ],
)
async def test_an_invalid_allocation_record_is_reported_and_alters_no_one(
    consul_server, bad: bytes, kind: str
) -> None:
    labels = {"controller": "haproxy-kv", "kind": kind}
    before = metric("reconciler_invalid_input_total", labels)
    async with running([haproxy_kv.build(config())], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await arrive(consul, "ada", "bob")
        await eventually(lambda: _all_tcp(consul, ["ada", "bob"]))
        ada = await routes_of(consul, "ada")
        ada_reservation = await read_json(consul, f"{ROUTES_DATA_PREFIX}ada")

        await consul.kv_put(f"{ALLOCATIONS_PREFIX}ada", bad)
        await arrive(consul, "carol")
        await eventually(lambda: _all_tcp(consul, ["carol"]))
        status = await eventually(lambda: read_json(consul, "reconciler/status/haproxy-kv/ada"))
        assert status["phase"] == "Invalid"
        assert "ada" in status["message"]
        await eventually(lambda: metric("reconciler_invalid_input_total", labels) > before)
        # ada is left exactly as she was; nobody else is touched.
        assert await routes_of(consul, "ada") == ada
        assert await read_json(consul, f"{ROUTES_DATA_PREFIX}ada") == ada_reservation
        assert (await routes_of(consul, "bob"))["tcp"]

        # Fixed input: the status entry goes.
        await arrive(consul, "ada")
        await eventually(lambda: _none(read_json(consul, "reconciler/status/haproxy-kv/ada")))


async def test_a_lagging_requests_cache_never_costs_a_live_user_their_reservation(
    consul_server,
) -> None:
    from reconciler.clients.config import ClientsConfig

    clients = ClientsConfig.from_env({"CONSUL_HTTP_ADDR": consul_server.address})
    async with ConsulClient(clients.consul) as consul:
        reservation = b'{"subdomains":{"hmi":"aaaaaaaaaaaaaaaa"},"tcp_ports":{"core":20003}}'
        await consul.kv_put(f"{REQUESTS_PREFIX}ada", b"{}")
        await consul.kv_put(f"{ROUTES_DATA_PREFIX}ada", reservation)
        await consul.kv_put(f"{ROUTES_TCP_PREFIX}20003", b"ada")
        state = haproxy_kv.HAProxyKV(config())
        # The routes cache has seen ada's reservation and claim, the requests cache not her
        # request yet: the release transaction checks the request, Consul refuses it.
        _, routes = await consul.kv_list("manticore/routes/")
        view = StaleView(consul, {haproxy_kv.ROUTES_WATCH: {e.key: e for e in routes}})
        await state.user(view, "ada")  # type: ignore[arg-type]
        _, kept = await consul.kv_get(f"{ROUTES_DATA_PREFIX}ada")
        assert kept is not None
        assert kept.value == reservation
        _, claim = await consul.kv_get(f"{ROUTES_TCP_PREFIX}20003")
        assert claim is not None
        # A view that has seen nothing of her touches nothing either.
        await state.user(StaleView(consul, {}), "ada")  # type: ignore[arg-type]
        assert (await consul.kv_get(f"{ROUTES_DATA_PREFIX}ada"))[1] is not None
        # Once the request really is gone, the same call releases everything in one go.
        await consul.kv_delete(f"{REQUESTS_PREFIX}ada")
        await state.user(view, "ada")  # type: ignore[arg-type]
        assert (await consul.kv_get(f"{ROUTES_DATA_PREFIX}ada"))[1] is None
        assert (await consul.kv_get(f"{ROUTES_TCP_PREFIX}20003"))[1] is None


async def test_a_release_from_a_cache_that_is_behind_falls_back_to_fresh_reads(
    consul_server,
) -> None:
    """The cache shows an older reservation (another port) than Consul holds: the one-shot
    release transaction fails on its CAS, and the fresh-read release frees what is really held
    and nothing of anyone else."""
    from reconciler.clients.config import ClientsConfig

    clients = ClientsConfig.from_env({"CONSUL_HTTP_ADDR": consul_server.address})
    async with ConsulClient(clients.consul) as consul:
        await consul.kv_put(f"{ROUTES_DATA_PREFIX}ada", b'{"tcp_ports":{"core":20004}}')
        await consul.kv_put(f"{ROUTES_TCP_PREFIX}20004", b"ada")
        _, old = await consul.kv_list("manticore/routes/")
        stale = {e.key: e for e in old}
        await consul.kv_put(f"{ROUTES_DATA_PREFIX}ada", b'{"tcp_ports":{"core":20005}}')
        await consul.kv_put(f"{ROUTES_TCP_PREFIX}20005", b"ada")
        await consul.kv_put(f"{ROUTES_TCP_PREFIX}20006", b"bob")
        state = haproxy_kv.HAProxyKV(config())
        await state.user(StaleView(consul, {haproxy_kv.ROUTES_WATCH: stale}), "ada")  # type: ignore[arg-type]
        assert (await consul.kv_get(f"{ROUTES_DATA_PREFIX}ada"))[1] is None
        assert (await consul.kv_get(f"{ROUTES_TCP_PREFIX}20005"))[1] is None
        assert (await consul.kv_get(f"{ROUTES_TCP_PREFIX}20004"))[1] is None
        _, bob = await consul.kv_get(f"{ROUTES_TCP_PREFIX}20006")
        assert bob is not None
        assert bob.text == "bob"
