"""The waitlist controller against the embedded Consul and Nomad: FIFO, real capacity, CAS.

Nomad's nodes are sized so that three users of the production template fit on one node; the
test plays the jobs controller itself (registering and purging the claimed users' jobs), so
what the waitlist reacts to is real allocations holding real resources.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from controllers import waitlist
from controllers.api.ids import REQUESTS_PREFIX, WAITING_KEY, job_id
from controllers.api.waiting import decode_pages
from controllers.settings import Settings
from controllers.templates import JobTemplate, TemplateValues
from devstack.nomad.embedded import EmbeddedNomad
from devstack.nomad.testing import start_embedded_nomad
from reconciler.clients.consul import ConsulClient
from tests.integration.helpers import eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TEMPLATE = JobTemplate.load()
PER = TEMPLATE.resources  # 160 MHz, 325 MB, 1030 MB disk


@pytest.fixture
def small_nomad(consul_server: Any) -> Iterator[EmbeddedNomad]:
    """One node with room for exactly three users of the production template."""
    server = start_embedded_nomad(
        nodes=1,
        node_cpu=PER.cpu * 3 + 50,
        node_memory=8192,
        node_disk=51200,
        consul_addr=consul_server.url,
    )
    try:
        yield server
    finally:
        server.stop()


async def listed(consul: ConsulClient) -> dict[str, Any]:
    _, entries = await consul.kv_list(WAITING_KEY)
    wl = decode_pages(entries)
    assert not wl.problems, wl.problems
    return {u: (e.queue, e.claimed) for u, e in wl.ordered()}


def claimed(state: dict[str, Any]) -> list[str]:
    return [u for u, (_, c) in state.items() if c]


def register(nomad: EmbeddedNomad, user: str) -> None:
    job = TEMPLATE.render(
        TemplateValues(
            user=user,
            core_version="8.2.0",
            core_build="default",
            hmi_type="generic",
            hmi_version="master",
            domain="example.com",
            datacenters=("dc1",),
        )
    )
    httpx.post(f"{nomad.url}/v1/jobs", json={"Job": job}, trust_env=False).raise_for_status()


def purge(nomad: EmbeddedNomad, user: str) -> None:
    httpx.delete(
        f"{nomad.url}/v1/job/{job_id(user)}", params={"purge": "true"}, trust_env=False
    ).raise_for_status()


def sample(manager: Any, name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or None)


async def test_fifo_claims_follow_real_capacity(consul_server, small_nomad) -> None:
    settings = Settings.from_env({})
    controller = waitlist.build(settings)
    async with running([controller], consul_server.address, nomad_address=small_nomad.url) as (
        manager,
        consul,
    ):
        users = ["ada", "bob", "cy", "dee", "eve"]
        for user in users:
            await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")

        async def settled(expect_claimed: list[str], expect_listed: list[str]) -> bool:
            state = await listed(consul)
            return list(state) == expect_listed and claimed(state) == expect_claimed

        await eventually(lambda: settled(users[:3], users), timeout=20)
        state = await listed(consul)
        assert [q for q, _ in state.values()] == sorted(q for q, _ in state.values())
        assert len({q for q, _ in state.values()}) == 5
        # Nomad places the three claimed users: capacity is used up, nothing else is claimed
        for user in users[:3]:
            register(small_nomad, user)
        _, page = await consul.kv_get(WAITING_KEY)
        assert page is not None
        # ada leaves: her entry goes at once, but her allocation still holds resources
        await consul.kv_delete(f"{REQUESTS_PREFIX}ada")
        await eventually(lambda: settled(["bob", "cy"], users[1:]), timeout=20)
        # her job is purged, the allocation stops: dee is claimed with no new request
        purge(small_nomad, "ada")
        await eventually(lambda: settled(["bob", "cy", "dee"], users[1:]), timeout=20)
        # a node joins: eve is claimed too
        small_nomad.add_node(cpu=PER.cpu + 10)
        await eventually(lambda: settled(["bob", "cy", "dee", "eve"], users[1:]), timeout=20)
        # a newcomer goes to the end, with a queue number above every other
        await consul.kv_put(f"{REQUESTS_PREFIX}ann", b"{}")
        await eventually(lambda: settled(["bob", "cy", "dee", "eve"], [*users[1:], "ann"]))
        state = await listed(consul)
        assert state["ann"][0] > max(q for u, (q, _) in state.items() if u != "ann")
        assert sample(manager, "manticore_users", state="claimed") == 4
        assert sample(manager, "manticore_users", state="waiting") == 1


async def test_bad_requests_are_reported_and_block_nobody(consul_server, small_nomad) -> None:
    controller = waitlist.build(Settings.from_env({}))
    async with running([controller], consul_server.address, nomad_address=small_nomad.url) as (
        _manager,
        consul,
    ):
        await consul.kv_put(f"{REQUESTS_PREFIX}bad", b'{"core": {"version": "no spaces allowed"}}')
        await consul.kv_put(f"{REQUESTS_PREFIX}{'x' * 60}", b"{}")
        await consul.kv_put(f"{REQUESTS_PREFIX}good", b"{}")
        await eventually(lambda: _has(consul, "good"), timeout=20)
        state = await listed(consul)
        assert list(state) == ["good"]
        assert state["good"][1] is True

        async def status(user: str) -> dict[str, Any] | None:
            _, entry = await consul.kv_get(f"reconciler/status/waitlist/{user}")
            return None if entry is None else json.loads(entry.value or b"{}")

        bad = await eventually(lambda: status("bad"), timeout=10)
        assert bad["phase"] == "Invalid"
        long_id = await eventually(lambda: status("x" * 60), timeout=10)
        assert "characters" in long_id["message"]
        # fixing the request lets the user join; its status entry goes away
        await consul.kv_put(f"{REQUESTS_PREFIX}bad", b"{}")
        await eventually(lambda: _has(consul, "bad"), timeout=20)

        async def cleared() -> bool:
            return await status("bad") is None

        await eventually(cleared, timeout=10)


async def _has(consul: ConsulClient, user: str) -> bool:
    return user in await listed(consul)


async def test_max_users_caps_claims_and_a_second_pass_writes_nothing(
    consul_server, small_nomad
) -> None:
    controller = waitlist.build(Settings.from_env({"MAX_USERS": "1"}))
    async with running([controller], consul_server.address, nomad_address=small_nomad.url) as (
        manager,
        consul,
    ):
        for user in ("a1", "a2", "a3"):
            await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")

        async def three() -> bool:
            state = await listed(consul)
            return len(state) == 3 and claimed(state) == ["a1"]

        await eventually(three, timeout=20)
        _, before = await consul.kv_get(WAITING_KEY)
        assert before is not None
        runner = manager.runners["waitlist"]
        committed = sample(manager, "manticore_waiting_list_writes_total", outcome="committed")
        passes = sample(
            manager, "controller_runtime_reconcile_total", controller="waitlist", result="success"
        )
        runner.resync()
        await eventually(
            lambda: (
                sample(
                    manager,
                    "controller_runtime_reconcile_total",
                    controller="waitlist",
                    result="success",
                )
                > (passes or 0)
            )
        )
        _, after = await consul.kv_get(WAITING_KEY)
        assert after is not None
        assert after.modify_index == before.modify_index
        assert (
            sample(manager, "manticore_waiting_list_writes_total", outcome="committed") == committed
        )


async def put_many(consul: ConsulClient, keys: list[str], value: bytes = b"{}") -> None:
    from reconciler.clients.consul import KVOp

    for i in range(0, len(keys), 100):
        await consul.txn([KVOp.set(k, value) for k in keys[i : i + 100]])


async def delete_many(consul: ConsulClient, keys: list[str]) -> None:
    from reconciler.clients.consul import KVOp

    for i in range(0, len(keys), 100):
        await consul.txn([KVOp.delete(k) for k in keys[i : i + 100]])


async def test_a_full_list_refuses_newcomers_loudly_and_loses_none(
    consul_server, small_nomad
) -> None:
    controller = waitlist.build(Settings.from_env({"MANTICORE_WAITING_LIST_MAX_USERS": "40"}))
    async with running([controller], consul_server.address, nomad_address=small_nomad.url) as (
        manager,
        consul,
    ):
        users = [f"user-{i:03d}" for i in range(50)]
        await put_many(consul, [f"{REQUESTS_PREFIX}{u}" for u in users[:40]])

        async def count(n: int) -> bool:
            return len(await listed(consul)) == n

        await eventually(lambda: count(40), timeout=20)
        await put_many(consul, [f"{REQUESTS_PREFIX}{u}" for u in users[40:]])
        await eventually(lambda: sample(manager, "manticore_waiting_list_refused_users") == 10)
        assert len(await listed(consul)) == 40
        _, refused = await consul.kv_get(f"reconciler/status/waitlist/{users[45]}")
        assert refused is not None
        assert json.loads(refused.value or b"{}")["phase"] == "Refused"
        # room frees: the refused users join, in the order they asked
        await delete_many(consul, [f"{REQUESTS_PREFIX}{u}" for u in users[:10]])

        async def rest_listed() -> bool:
            return list(await listed(consul)) == users[10:]

        await eventually(rest_listed, timeout=20)
        await eventually(lambda: sample(manager, "manticore_waiting_list_refused_users") == 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_list_holds_20000_users(consul_server, small_nomad) -> None:
    import time
    import uuid

    controller = waitlist.build(Settings.from_env({}))
    async with running([controller], consul_server.address, nomad_address=small_nomad.url) as (
        manager,
        consul,
    ):
        users = [str(uuid.UUID(int=i + 1)) for i in range(20_000)]
        started = time.monotonic()
        await put_many(consul, [f"{REQUESTS_PREFIX}{u}" for u in users])

        async def all_listed() -> bool:
            return sample(manager, "manticore_users", state="waiting") == 20_000 - 3

        await eventually(all_listed, timeout=240, every=0.5)
        elapsed = time.monotonic() - started
        _, entries = await consul.kv_list(WAITING_KEY)
        wl = decode_pages(entries)
        assert not wl.problems
        assert len(wl.entries) == 20_000
        assert len(wl.claimed()) == 3
        sizes = sorted(len(e.value or b"") for e in entries)
        assert max(sizes) <= 128 * 1024
        total = sum(sizes)
        assert sample(manager, "manticore_waiting_list_bytes") == total
        assert sample(manager, "manticore_waiting_list_largest_page_bytes") == max(sizes)
        print(
            f"\n20000 users: {len(entries)} pages, {total} bytes, largest page {max(sizes)} "
            f"bytes ({max(sizes) / (512 * 1024):.0%} of 512 KiB), listed in {elapsed:.1f}s"
        )
        # FIFO across pages: queue numbers follow the order the requests arrived
        assert [u for u, _ in wl.ordered()] == users


def set_eligibility(nomad: EmbeddedNomad, node: str, eligible: bool) -> None:
    value = "eligible" if eligible else "ineligible"
    httpx.post(
        f"{nomad.url}/v1/node/{node}/eligibility",
        json={"NodeID": node, "Eligibility": value},
        trust_env=False,
    ).raise_for_status()


async def test_a_node_becoming_eligible_claims_the_next_users(consul_server) -> None:
    nomad = start_embedded_nomad(
        nodes=2,
        node_cpu=PER.cpu * 3 + 50,
        node_memory=8192,
        node_disk=51200,
        consul_addr=consul_server.url,
    )
    try:
        # the second node is there but ineligible: room for three users only
        set_eligibility(nomad, nomad.node_ids()[1], eligible=False)
        async with running(
            [waitlist.build(Settings.from_env({}))], consul_server.address, nomad_address=nomad.url
        ) as (manager, consul):
            users = ["ada", "bob", "cy", "dee", "eve"]
            for user in users:
                await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")

            async def claims(expected: list[str]) -> bool:
                state = await listed(consul)
                return list(state) == users and claimed(state) == expected

            await eventually(lambda: claims(users[:3]), timeout=20)
            assert sample(manager, "manticore_capacity_users") == 3
            # it becomes eligible: dee and eve are claimed with no new request
            set_eligibility(nomad, nomad.node_ids()[1], eligible=True)
            await eventually(lambda: claims(users), timeout=20)
            assert sample(manager, "manticore_capacity_users") == 6
    finally:
        nomad.stop()


async def test_passes_take_the_pages_from_the_watch_once_it_shows_their_writes(
    consul_server, small_nomad
) -> None:
    """A pass does not read the whole list from Consul again per change: after the first pass
    (and whenever the watch lags behind this process's own write) it does; otherwise the
    pages and their CAS indexes come from the page watch. A page someone else rewrote makes
    the CAS fail and the next pass read afresh, losing nobody."""
    controller = waitlist.build(Settings.from_env({"MAX_USERS": "2"}))
    async with running([controller], consul_server.address, nomad_address=small_nomad.url) as (
        manager,
        consul,
    ):

        def reads(source: str) -> float:
            return sample(manager, "manticore_waiting_list_page_reads_total", source=source) or 0

        before = reads("consul"), reads("watch")
        users = [f"w{i}" for i in range(8)]
        for n, user in enumerate(users, start=1):
            await consul.kv_put(f"{REQUESTS_PREFIX}{user}", b"{}")

            async def joined(n: int = n) -> bool:
                return len(await listed(consul)) == n

            await eventually(joined, timeout=20)
            # Let the watch deliver the write, so the next change finds it caught up.
            await anyio.sleep(0.3)
        state = await listed(consul)
        assert list(state) == users
        assert claimed(state) == ["w0", "w1"]
        consul_reads, watch_reads = reads("consul") - before[0], reads("watch") - before[1]
        assert watch_reads >= 6, (consul_reads, watch_reads)
        assert consul_reads <= 3, (consul_reads, watch_reads)

        # Another writer (a previous leader) puts a stranger into the page: the list converges
        # on what the requests say, whichever way the pages were taken.
        _, page = await consul.kv_get(WAITING_KEY)
        assert page is not None
        doc = json.loads(page.value)
        doc["stranger"] = {"queue": 999, "claimed": False}
        await consul.kv_put(WAITING_KEY, json.dumps(doc).encode())
        await consul.kv_put(f"{REQUESTS_PREFIX}w8", b"{}")

        async def settled() -> bool:
            now = await listed(consul)
            return "stranger" not in now and list(now) == [*users, "w8"]

        await eventually(settled, timeout=20)
