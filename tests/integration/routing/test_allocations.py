"""allocations end to end on the embedded Consul: services in, one record per user out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controllers import allocations
from controllers.api.ids import ALLOCATIONS_PREFIX, REQUESTS_PREFIX
from tests.integration.helpers import eventually, running
from tests.integration.routing.helpers import Services, metric, read_json, with_frozen_watch

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def services(consul_server) -> Iterator[Services]:
    registry = Services(consul_server.url)
    yield registry
    registry.close()


async def test_a_requested_user_s_passing_services_become_one_record(
    consul_server, services: Services
) -> None:
    async with running([allocations.controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await consul.kv_put(f"{REQUESTS_PREFIX}ada", b"{}")
        alloc = services.register("ada")

        async def record() -> object:
            return await read_json(consul, f"{ALLOCATIONS_PREFIX}ada")

        got = await eventually(record)
        assert got == {
            "allocation": alloc,
            "job": "core-hmi-ada",
            "node": "devstack",
            "services": {
                "broker": {"address": "10.0.0.5", "port": 21001, "route": "http"},
                "core": {"address": "10.0.0.5", "port": 21002, "route": "tcp"},
                "hmi": {"address": "10.0.0.5", "port": 21000, "route": "http"},
            },
        }

        # One critical service withdraws the record; passing again brings it back.
        services.set_status("ada", "core", alloc, "critical")
        await eventually(lambda: _absent(consul, "ada"))
        services.set_status("ada", "core", alloc, "passing")
        await eventually(record)

        # The allocation moves: the new one is published once it fully passes.
        moved = services.register("ada", address="10.0.0.9", status="critical")
        services.deregister("ada", alloc)
        await eventually(lambda: _absent(consul, "ada"))
        for role in ("hmi", "broker", "core"):
            services.set_status("ada", role, moved, "passing")

        async def moved_record() -> bool:
            value = await record()
            return isinstance(value, dict) and value["allocation"] == moved

        await eventually(moved_record)

        # Departure: the request goes, the record goes although the services still pass.
        await consul.kv_delete(f"{REQUESTS_PREFIX}ada")
        await eventually(lambda: _absent(consul, "ada"))


async def test_services_that_pass_before_the_requests_watch_shows_the_request_are_recorded(
    consul_server, services: Services
) -> None:
    """The requests watch re-reads its busy prefix at most every 2 s; a new user whose services
    pass before it shows their request is recorded at once, from one read of the key."""
    controller = with_frozen_watch(allocations.controller, allocations.REQUESTS_WATCH)
    async with running([controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await consul.kv_put(f"{REQUESTS_PREFIX}ada", b"{}")
        services.register("ada")
        got = await eventually(lambda: read_json(consul, f"{ALLOCATIONS_PREFIX}ada"), timeout=10)
        assert got["job"] == "core-hmi-ada"
        # The watch has still not shown the request: the record came from the read.
        assert (
            f"{REQUESTS_PREFIX}ada"
            not in manager.runners["allocations"].sources[allocations.REQUESTS_WATCH].items()
        )


async def test_rogue_and_malformed_services_are_not_published(
    consul_server, services: Services
) -> None:
    rejected_before = metric("manticore_allocation_instances_rejected_total", {"reason": "route"})
    async with running([allocations.controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        services.register("mallory")  # no request: rogue
        await consul.kv_put(f"{REQUESTS_PREFIX}bob", b"{}")
        services.register(
            "bob",
            roles={"core": ("udp", 21002), "hmi": ("http", 21000), "broker": ("http", 21001)},
        )
        await consul.kv_put(f"{REQUESTS_PREFIX}carol", b"{}")
        services.register("carol")

        await eventually(lambda: read_json(consul, f"{ALLOCATIONS_PREFIX}carol"))
        await eventually(
            lambda: (
                metric("manticore_allocation_instances_rejected_total", {"reason": "route"})
                > rejected_before
            )
        )

        async def bob_status() -> object:
            return await read_json(consul, "reconciler/status/allocations/bob")

        status = await eventually(bob_status)
        assert "route 'udp'" in status["message"]
        # bob's core is unusable, so he lacks a required role: no record (yet).
        assert await read_json(consul, f"{ALLOCATIONS_PREFIX}bob") is None
        assert await read_json(consul, f"{ALLOCATIONS_PREFIX}mallory") is None

        # A hand-written record for a user without a request is removed.
        await consul.kv_put(f"{ALLOCATIONS_PREFIX}mallory", b"{}")
        await eventually(lambda: _absent(consul, "mallory"))
        await eventually(lambda: metric("manticore_users_running") == 1, timeout=30)


async def _absent(consul, user: str) -> bool:
    return await read_json(consul, f"{ALLOCATIONS_PREFIX}{user}") is None
