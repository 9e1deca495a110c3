"""The expiry controller against the embedded Consul: two replicas, a leader change, and time
that moves only when the test says so."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import anyio
import pytest

from controllers import expiry
from controllers.api.expiry import EXPIRY_PREFIX, ExpiryRecord
from controllers.settings import Settings, UsageSettings
from reconciler.controller import RunnerOptions
from reconciler.kv import decode
from reconciler.manager import Manager, ManagerOptions
from tests.integration.helpers import clients_config, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
REQ = "manticore/requests/data/"
PAGE = "manticore/waiting/data"


class FakeTime:
    """A wall clock both replicas share, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def settings(*, reset: bool = False) -> Settings:
    return Settings(
        usage=UsageSettings(
            usage_duration=600,
            warning_duration=60,
            reset_timer_allowed=reset,
            recheck_interval=0.05,
        )
    )


@contextlib.asynccontextmanager
async def replica(address: str, name: str, clock: FakeTime, *, reset: bool = False):
    manager = Manager(
        [expiry.build(settings(reset=reset), clock=clock)],
        options=ManagerOptions(
            metrics_port=0, drain_timeout=2, runner=RunnerOptions(identity=name, lock_ttl=10)
        ),
        config=clients_config(address),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        try:
            yield manager
        finally:
            manager.stop()


async def record_of(consul, user: str) -> ExpiryRecord | None:
    _, entry = await consul.kv_get(EXPIRY_PREFIX + user)
    return None if entry is None else decode(ExpiryRecord, entry.value)


async def claim(consul, *users: str, waiting: tuple[str, ...] = ()) -> None:
    page = {u: {"claimed": True, "queue": n} for n, u in enumerate(users)}
    page.update({u: {"claimed": False, "queue": 100 + n} for n, u in enumerate(waiting)})
    for user in (*users, *waiting):
        await consul.kv_put(REQ + user, b"{}", cas=0)
    await consul.kv_put(PAGE, json.dumps(page).encode())


async def test_deadlines_survive_a_leader_change_and_users_expire(consul_server) -> None:
    from reconciler.clients.consul import ConsulClient

    clock = FakeTime()
    async with (
        ConsulClient(clients_config(consul_server.address).consul) as consul,
        replica(consul_server.address, "one", clock) as one,
        replica(consul_server.address, "two", clock) as two,
    ):
        await eventually(lambda: one.runners["expiry"].is_leader or two.runners["expiry"].is_leader)
        leader, standby = (one, two) if one.runners["expiry"].is_leader else (two, one)
        await claim(consul, "ada", waiting=("bob",))
        created = await eventually(lambda: record_of(consul, "ada"))
        assert created.started_at == T0
        assert created.expires_at == T0 + dt.timedelta(seconds=660)
        assert await record_of(consul, "bob") is None  # waiting users have no clock

        clock.advance(300)
        leader.stop()  # SIGTERM-like: the lock is released, the standby takes over
        await eventually(lambda: standby.runners["expiry"].is_leader, timeout=20)
        # The new leader keeps the deadline: same record, not restarted at T0+300.
        await anyio.sleep(0.3)
        assert await record_of(consul, "ada") == created

        clock.advance(301)  # T0+601: past warn_at
        warned = await eventually(lambda: _warned(consul, "ada"), timeout=10)
        assert warned.warned_at == T0 + dt.timedelta(seconds=601)
        assert warned.started_at == T0  # still the first deadline

        clock.advance(60)  # T0+661: past expires_at
        await eventually(lambda: _gone(consul, REQ + "ada"), timeout=10)
        await eventually(lambda: _gone(consul, EXPIRY_PREFIX + "ada"), timeout=10)
        _, bob = await consul.kv_get(REQ + "bob")
        assert bob is not None  # only the expired user's request goes


async def test_activity_restarts_the_clock_when_allowed(consul_server) -> None:
    from reconciler.clients.consul import ConsulClient

    clock = FakeTime()
    async with (
        ConsulClient(clients_config(consul_server.address).consul) as consul,
        replica(consul_server.address, "one", clock, reset=True),
    ):
        await claim(consul, "cy")
        first = await eventually(lambda: record_of(consul, "cy"))
        clock.advance(601)
        await eventually(lambda: _warned(consul, "cy"))
        active = (T0 + dt.timedelta(seconds=610)).isoformat()
        _, entry = await consul.kv_get(REQ + "cy")
        await consul.kv_put(
            REQ + "cy", json.dumps({"last_activity": active}).encode(), cas=entry.modify_index
        )
        clock.advance(10)

        async def restarted():
            record = await record_of(consul, "cy")
            return record if record and record.resets == 1 else None

        record = await eventually(restarted)
        assert record.warned_at is None
        assert record.started_at == T0 + dt.timedelta(seconds=610) != first.started_at
        clock.advance(100)
        await anyio.sleep(0.3)
        _, still = await consul.kv_get(REQ + "cy")
        assert still is not None


async def _warned(consul, user: str) -> ExpiryRecord | None:
    record = await record_of(consul, user)
    return record if record is not None and record.warned_at is not None else None


async def _gone(consul, key: str) -> bool:
    _, entry = await consul.kv_get(key)
    return entry is None
