"""The example controller end to end: a Manager on the embedded Consul, leader-elected."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY

from examples import greeter
from examples.greeter import IN, OUT, Greeting, plan
from reconciler.kv import decode, encode
from tests.integration.helpers import eventually, running, wait_for_value

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_greeter_converges_and_cleans_up(consul_server) -> None:
    async with running([greeter.controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await consul.kv_put(f"{IN}ada", b'{"greeting": "hello"}')
        await wait_for_value(consul, f"{OUT}ada", b'{"message":"hello, ada!"}')

        # a hand-made change to owned output is reverted (the controller watches its output)
        await consul.kv_put(f"{OUT}ada", b"tampered")
        await wait_for_value(consul, f"{OUT}ada", b'{"message":"hello, ada!"}')

        await consul.kv_delete(f"{IN}ada")
        await wait_for_value(consul, f"{OUT}ada", None)


async def test_bad_input_is_counted_and_does_not_block_other_users(consul_server) -> None:
    before = REGISTRY.get_sample_value(
        "reconciler_invalid_input_total", {"controller": "greeter", "kind": "malformed-json"}
    )
    async with running([greeter.controller], consul_server.address) as (manager, consul):
        await eventually(lambda: manager.ready)
        await consul.kv_put(f"{IN}mallory", b"{not json")
        await consul.kv_put(f"{IN}bob", b'{"greeting": "hi"}')
        await wait_for_value(consul, f"{OUT}bob", b'{"message":"hi, bob!"}')

        def counted() -> bool:
            after = REGISTRY.get_sample_value(
                "reconciler_invalid_input_total",
                {"controller": "greeter", "kind": "malformed-json"},
            )
            return (after or 0) > (before or 0)

        await eventually(counted)
        _, entry = await consul.kv_get(f"{OUT}mallory")
        assert entry is None
        assert manager.health is not None
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{manager.health.port}/metrics")).text
        assert 'leader_election_master_status{name="greeter"} 1.0' in text


async def test_standby_replica_takes_over_when_the_leader_stops(consul_server) -> None:
    async with running([greeter.controller], consul_server.address, identity="one") as (
        first,
        consul,
    ):
        await eventually(lambda: first.runners["greeter"].is_leader)
        async with running([greeter.controller], consul_server.address, identity="two") as (
            second,
            _,
        ):
            await eventually(lambda: second.ready)
            assert not second.runners["greeter"].is_leader
            # the standby's sources are warm: it sees inputs although it does not act on them
            await consul.kv_put(f"{IN}carol", b'{"greeting": "hey"}')
            await wait_for_value(consul, f"{OUT}carol", b'{"message":"hey, carol!"}')
            await eventually(
                lambda: f"{IN}carol" in second.runners["greeter"].sources[f"kv:{IN}"].items()
            )

            first.stop()
            await eventually(lambda: second.runners["greeter"].is_leader, timeout=5)
            await consul.kv_put(f"{IN}dave", b'{"greeting": "yo"}')
            await wait_for_value(consul, f"{OUT}dave", b'{"message":"yo, dave!"}')


def test_plan_is_pure_and_idempotent() -> None:
    assert plan("x", None) is None
    once = plan("x", Greeting(greeting="hello"))
    assert once is not None
    assert encode(once) == encode(plan("x", decode(Greeting, b'{"greeting":"hello"}')))  # type: ignore[arg-type]
