"""Leader election and fencing against the embedded Consul (sessions, locks, transactions)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from prometheus_client import REGISTRY

from reconciler.clients.consul import ConsulClient, KVOp
from reconciler.clients.errors import FencingError
from reconciler.kv import decode
from reconciler.leader import FencedKV, LeaderElector, LeaderRecord
from tests.integration.helpers import clients_config, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

_n = itertools.count()


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


@pytest.fixture
async def consul(consul_server) -> AsyncIterator[ConsulClient]:
    async with ConsulClient(clients_config(consul_server.address).consul) as client:
        yield client


class Replica:
    """One elector plus a lead() that records its terms and cancellations."""

    def __init__(self, client: ConsulClient, controller: str, identity: str) -> None:
        self.elector = LeaderElector(client, controller, identity=identity, lock_delay=1)
        self.leading = anyio.Event()
        self.cancelled = 0

    async def lead(self) -> None:
        self.leading.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            self.leading = anyio.Event()
            raise


async def test_a_single_replica_leads_and_names_itself(consul: ConsulClient) -> None:
    name = f"lead-{next(_n)}"
    replica = Replica(consul, name, "replica-a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(replica.elector.run, replica.lead)
        with anyio.fail_after(5):
            await replica.leading.wait()
        assert replica.elector.is_leader
        assert sample("leader_election_master_status", name=name) == 1
        _, entry = await consul.kv_get(f"reconciler/leader/{name}")
        assert entry is not None
        assert entry.session == replica.elector.session
        record = decode(LeaderRecord, entry.value)
        assert record.holder == "replica-a"
        assert record.controller == name
        await replica.elector.release()
        tg.cancel_scope.cancel()
    assert sample("leader_election_master_status", name=name) == 0
    _, entry = await consul.kv_get(f"reconciler/leader/{name}")
    assert entry is not None
    assert entry.session is None


async def test_standby_takes_over_at_once_after_release(consul: ConsulClient) -> None:
    name = f"lead-{next(_n)}"
    a = Replica(consul, name, "a")
    b = Replica(consul, name, "b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.elector.run, a.lead)
        with anyio.fail_after(5):
            await a.leading.wait()
        tg.start_soon(b.elector.run, b.lead)
        await eventually(lambda: b.elector.state_known)
        assert not b.elector.is_leader
        started = time.monotonic()
        await a.elector.release()
        with anyio.fail_after(5):
            await b.leading.wait()
        # an explicit release skips lock-delay: the standby does not wait a TTL or a delay
        assert time.monotonic() - started < 0.9
        assert a.cancelled == 1
        assert not a.elector.is_leader
        tg.cancel_scope.cancel()


async def test_invalidated_session_cancels_work_and_standby_takes_over(
    consul: ConsulClient,
) -> None:
    name = f"lead-{next(_n)}"
    a = Replica(consul, name, "a")
    b = Replica(consul, name, "b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.elector.run, a.lead)
        with anyio.fail_after(5):
            await a.leading.wait()
        tg.start_soon(b.elector.run, b.lead)
        await eventually(lambda: b.elector.state_known)
        session = a.elector.session
        assert session is not None
        # As when the TTL runs out or a check fails: the session is invalidated under A.
        await consul.session_destroy(session)
        await eventually(lambda: a.cancelled == 1, timeout=5)
        # the lock-delay (1 s) applies after invalidation; then exactly one replica leads
        await eventually(lambda: a.elector.is_leader or b.elector.is_leader, timeout=10)
        assert not (a.elector.is_leader and b.elector.is_leader)
        assert a.elector.terms + b.elector.terms == 2
        tg.cancel_scope.cancel()


class StaleFence:
    """A fence that still believes in a session the server has already invalidated."""

    def __init__(self, lock_key: str, session: str) -> None:
        self.value = (lock_key, session)

    def fence(self) -> tuple[str, str]:
        return self.value


async def test_a_deposed_leaders_write_is_rejected_by_consul(consul: ConsulClient) -> None:
    name = f"fence-{next(_n)}"
    replica = Replica(consul, name, "a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(replica.elector.run, replica.lead)
        with anyio.fail_after(5):
            await replica.leading.wait()
        kv = FencedKV(consul, name, replica.elector)
        assert await kv.put(f"fenced/{name}/ok", b"1")
        assert sample("reconciler_fenced_writes_total", controller=name, outcome="committed") == 1
        # cas is checked inside the same transaction: a stale index is a conflict, not a write
        assert not await kv.put(f"fenced/{name}/ok", b"2", cas=1)
        assert sample("reconciler_fenced_writes_total", controller=name, outcome="conflict") == 1

        old_session = replica.elector.session
        assert old_session is not None
        await replica.elector.release()
        tg.cancel_scope.cancel()

    # Another replica now holds the lock; the old one's view is stale.
    other = await consul.session_create("other", ttl=10, lock_delay=0, node_checks=[])
    assert await consul.kv_put(f"reconciler/leader/{name}", b"", acquire=other)
    stale = FencedKV(consul, name, StaleFence(f"reconciler/leader/{name}", old_session))  # type: ignore[arg-type]
    with pytest.raises(FencingError, match="no longer holds the lock"):
        await stale.put(f"fenced/{name}/late", b"x")
    assert sample("reconciler_fenced_writes_total", controller=name, outcome="rejected") == 1
    _, late = await consul.kv_get(f"fenced/{name}/late")
    assert late is None, "the deposed leader's write must not land"
    # and a standby that was never leader is refused locally, without a round trip
    idle = LeaderElector(consul, name, identity="idle")
    with pytest.raises(FencingError, match="not the leader"):
        await FencedKV(consul, name, idle).delete(f"fenced/{name}/ok")
    assert sample("reconciler_fenced_writes_total", controller=name, outcome="rejected") == 2
    await consul.session_destroy(other)


async def test_fenced_transactions_are_atomic(consul: ConsulClient) -> None:
    name = f"fence-{next(_n)}"
    replica = Replica(consul, name, "a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(replica.elector.run, replica.lead)
        with anyio.fail_after(5):
            await replica.leading.wait()
        kv = FencedKV(consul, name, replica.elector)
        ops = [KVOp.set(f"atomic/{name}/a", b"1"), KVOp.check_not_exists(f"atomic/{name}/a")]
        assert not await kv.apply(ops)
        _, entry = await consul.kv_get(f"atomic/{name}/a")
        assert entry is None, "a failed check rolls back the whole transaction"
        with pytest.raises(ValueError, match="at most 127"):
            await kv.apply([KVOp.set(f"atomic/{name}/{i}", b"") for i in range(128)])
        await replica.elector.release()
        tg.cancel_scope.cancel()


async def test_unfenced_writer_writes_directly(consul: ConsulClient) -> None:
    kv = FencedKV(consul, "unfenced")
    assert not kv.fenced
    assert await kv.put("unfenced/a", b"1")
    assert await kv.put("unfenced/a", b"2", cas=0) is False
    assert await kv.delete("unfenced/a")
    _, entry = await consul.kv_get("unfenced/a")
    assert entry is None


def test_session_ttl_below_consuls_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        LeaderElector(None, "x", ttl=5)  # type: ignore[arg-type]
