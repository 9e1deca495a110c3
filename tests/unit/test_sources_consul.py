"""KV and service-health sources against the embedded Consul, over real HTTP.

The embedded Consul reproduces the blocking-query behaviours the sources must cope with (index
resets on a snapshot restore, 404 indexes for missing keys, injected 500s), so each rule of
``features/blocking.mdx`` is checked against a server rather than a mock.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import httpx
import pytest
from prometheus_client import REGISTRY

from devstack.consul.server import ConsulServer, start_consul
from reconciler.clients.config import ConsulConfig
from reconciler.clients.consul import ConsulClient
from reconciler.sources import Change, KVSource, ServiceHealthSource, Source

pytestmark = pytest.mark.anyio

_ids = itertools.count()


@pytest.fixture
def consul_server() -> Iterator[ConsulServer]:
    server = start_consul(node_name="node1")
    yield server
    server.stop()


@pytest.fixture
async def client(consul_server: ConsulServer, anyio_backend: str) -> AsyncIterator[ConsulClient]:
    config = ConsulConfig(host=consul_server.host, port=consul_server.port)
    async with ConsulClient(config, read_attempts=1) as c:
        yield c


class Recorder:
    """Collects emitted changes (their ids by batch) and lets a test wait for one."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.changes: list[Change] = []

    def __call__(self, changes: Iterable[Change]) -> None:
        batch = list(changes)
        self.changes.extend(batch)
        self.batches.append([c.id for c in batch])

    @property
    def ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]

    def clear(self) -> None:
        self.batches.clear()
        self.changes.clear()

    async def wait_for(self, wanted: str, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while wanted not in self.ids:
                await anyio.sleep(0.01)


def metric(name: str, controller: str, source: str) -> float:
    value = REGISTRY.get_sample_value(name, {"controller": controller, "source": source})
    return 0.0 if value is None else value


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


@asynccontextmanager
async def running(source: Source, rec: Recorder) -> AsyncIterator[str]:
    """Run ``source`` in a task group for the block; yields the controller name used."""
    controller = f"test-{next(_ids)}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(source.run, rec, controller=controller))
        yield controller
        tg.cancel_scope.cancel()


def kv_source(client: ConsulClient, key: str, **kwargs: object) -> KVSource:
    opts: dict[str, object] = {"wait": 2.0, "backoff_base": 0.05, "backoff_cap": 0.2}
    opts.update(kwargs)
    return KVSource(client, key, **opts)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- KV


async def test_prefix_watch_lists_then_emits_only_changed_keys(client: ConsulClient) -> None:
    await client.kv_put("app/a", b"1")
    await client.kv_put("app/b", b"2")
    source = kv_source(client, "app/")
    assert isinstance(source, Source)
    assert source.recurse
    assert not source.ready
    rec = Recorder()
    async with running(source, rec) as controller:
        with anyio.fail_after(5):
            await source.wait_ready()
        assert rec.batches == [["app/a", "app/b"]]  # the initial list
        assert source.items()["app/a"].value == b"1"
        assert metric("reconciler_source_ready", controller, source.name) == 1
        assert (
            metric("reconciler_watch_last_success_timestamp_seconds", controller, source.name) > 0
        )

        rec.clear()
        await client.kv_put("app/b", b"22")
        await rec.wait_for("app/b")
        await client.kv_put("app/c", b"3")
        await rec.wait_for("app/c")
        await client.kv_delete("app/a")
        await rec.wait_for("app/a")
        assert rec.batches == [["app/b"], ["app/c"], ["app/a"]]
        assert set(source.items()) == {"app/b", "app/c"}
        assert metric("reconciler_watch_events_total", controller, source.name) == 5

        # A write outside the prefix does not produce an event.
        rec.clear()
        await client.kv_put("other/x", b"1")
        await anyio.sleep(0.2)
        assert rec.batches == []

        # Nor does a value rewritten with identical bytes. (Current Consul skips such a write in
        # its state store; an older one moves the ModifyIndex. Either way: no event.) Another
        # key's change makes the long poll return with the rewritten one in it too.
        await client.kv_put("app/b", b"22")
        await client.kv_put("app/c", b"33")
        await rec.wait_for("app/c")
        assert rec.ids == ["app/c"]


async def test_prefix_wake_decodes_only_entries_whose_modify_index_moved(
    client: ConsulClient,
) -> None:
    for i in range(50):
        await client.kv_put(f"many/k{i}", str(i).encode())
    _, first = await client.kv_list("many/")
    known = {e.key: e for e in first}
    await client.kv_put("many/k7", b"seven")
    session = await client.session_create("reuse", ttl=10, node_checks=[])
    assert await client.kv_put("many/k9", b"9", acquire=session)  # same bytes, new holder
    _, second = await client.kv_list("many/", known=known)
    by_key = {e.key: e for e in second}
    assert len(second) == 50
    # Unchanged entries are the very objects of the previous answer (nothing decoded again)...
    assert all(by_key[k] is known[k] for k in known if k not in ("many/k7", "many/k9"))
    # ...and every write moves ModifyIndex, a lock holder's change included.
    assert by_key["many/k7"].value == b"seven"
    assert by_key["many/k7"] is not known["many/k7"]
    assert by_key["many/k9"].session == session
    assert by_key["many/k9"] is not known["many/k9"]
    # The source relies on it: a lock change under a watched prefix is still an event.
    source = kv_source(client, "many/")
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        rec.clear()
        assert await client.kv_put("many/k9", b"9", release=session)
        await rec.wait_for("many/k9")
        assert source.items()["many/k9"].session is None
        assert rec.ids == ["many/k9"]


async def test_missing_key_does_not_wake_on_unrelated_writes(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    source = kv_source(client, "config/singleton", wait=30.0)
    assert not source.recurse
    rec = Recorder()
    async with running(source, rec) as controller:
        with anyio.fail_after(5):
            await source.wait_ready()
        assert dict(source.items()) == {}
        await eventually(lambda: consul_server.stats()["BlockingQueries"] >= 1)
        requests_before = metric("reconciler_watch_requests_total", controller, source.name)
        for i in range(20):
            await client.kv_put(f"config/other{i}", b"x")
        await anyio.sleep(0.3)
        assert rec.batches == []
        # Still parked on the 404's index: at most one early return, no request per write.
        requests_after = metric("reconciler_watch_requests_total", controller, source.name)
        assert requests_after - requests_before <= 1

        await client.kv_put("config/singleton", b"on")
        await rec.wait_for("config/singleton")
        assert source.items()["config/singleton"].value == b"on"
        await client.kv_delete("config/singleton")
        await eventually(lambda: rec.ids.count("config/singleton") == 2)
        assert dict(source.items()) == {}


async def test_index_going_backwards_resets_and_the_watch_keeps_working(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    for i in range(10):
        await client.kv_put(f"r/k{i}", str(i).encode())
    source = kv_source(client, "r/")
    rec = Recorder()
    async with running(source, rec) as controller:
        with anyio.fail_after(5):
            await source.wait_ready()
        await eventually(lambda: consul_server.stats()["BlockingQueries"] >= 1)
        rec.clear()
        consul_server.reset_index(1)
        await eventually(
            lambda: metric("reconciler_watch_index_resets_total", controller, source.name) >= 1
        )
        # The data is re-read from scratch; only indexes moved (clamped by the reset), no value
        # did, so nothing a reconcile reads changed and nothing is emitted.
        await eventually(lambda: source.items()["r/k3"].modify_index <= 1)
        assert rec.ids == []
        assert source.items()["r/k3"].value == b"3"
        # Changes after the reset still arrive.
        rec.clear()
        await client.kv_put("r/k3", b"changed")
        await rec.wait_for("r/k3")
        assert source.items()["r/k3"].value == b"changed"


async def test_a_watch_that_asks_with_an_index_from_before_a_restore_reads_again(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    """A query sent after a restore with the old, higher index waits for an index above it
    (its whole ``wait``, 5 minutes by default); once another watch of the same server has seen
    the index go backwards, this one reads from 0 instead and misses nothing."""
    for i in range(20):
        await client.kv_put(f"p/k{i}", b"x")
    await client.kv_put("q/b", b"before")
    parked = kv_source(client, "p/", wait=60.0)
    # Its next request leaves 2 s after its first read: after the restore below.
    late = kv_source(client, "q/", wait=60.0, rate=0.5, burst=1)
    rec_parked, rec_late = Recorder(), Recorder()
    async with running(parked, rec_parked), running(late, rec_late) as controller:
        with anyio.fail_after(5):
            await parked.wait_ready()
            await late.wait_ready()
        await eventually(lambda: consul_server.stats()["BlockingQueries"] >= 1)
        consul_server.reset_index(1)
        await client.kv_put("q/b", b"after")  # index 2: below what the late watch holds
        await eventually(lambda: late.items()["q/b"].value == b"after", timeout=10)
        assert metric("reconciler_watch_index_resets_total", controller, late.name) == 1


async def test_errors_back_off_and_recover(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    await client.kv_put("e/a", b"1")
    consul_server.set_faults(error_rate=1.0, path_prefix="/v1/kv/")
    source = kv_source(client, "e/", backoff_base=0.05, backoff_cap=0.4)
    rec = Recorder()
    async with running(source, rec) as controller:
        await anyio.sleep(1.0)
        assert not source.ready  # not before a first successful read
        errors = metric("reconciler_watch_errors_total", controller, source.name)
        requests = metric("reconciler_watch_requests_total", controller, source.name)
        assert errors >= 3
        # Exponential backoff: a handful of attempts in a second, not a hot loop.
        assert requests <= 12
        assert rec.batches == []

        consul_server.clear_faults()
        with anyio.fail_after(5):
            await source.wait_ready()
        assert rec.ids == ["e/a"]

        # A failure while watching: nothing is lost once the server recovers.
        consul_server.set_faults(error_rate=1.0, path_prefix="/v1/kv/e/")
        consul_server.set_faults(error_rate=0.0)
        consul_server.set_faults(error_rate=1.0)
        await client.kv_put("x/unrelated", b"1")  # /v1/kv/x/ is not faulted
        consul_server.clear_faults()
        await client.kv_put("e/b", b"2")
        await rec.wait_for("e/b")


async def test_hot_server_is_bounded_by_the_token_bucket(anyio_backend: str) -> None:
    """A server answering at once with the same index (no change) cannot make the loop spin."""
    calls = 0

    class Instant:
        async def kv_get_blocking(
            self, key: str, *, index: int, wait: float | None = None
        ) -> tuple[int, None]:
            nonlocal calls
            calls += 1
            await anyio.lowlevel.checkpoint()
            return 7, None

        async def kv_list(
            self, prefix: str, *, index: int = 0, wait: float | None = None
        ) -> tuple[int, list[object]]:
            raise AssertionError("not a prefix watch")

    source = KVSource(Instant(), "k", rate=20.0, burst=2)  # type: ignore[arg-type]
    rec = Recorder()
    async with running(source, rec):
        await anyio.sleep(0.5)
    assert 5 <= calls <= 15  # ~2 burst + 20/s * 0.5 s
    assert rec.batches == []
    assert source.ready


# ----------------------------------------------------------------------------- health


async def register(
    server: ConsulServer, name: str, service_id: str, port: int, *, status: str = "critical"
) -> None:
    body = {
        "Name": name,
        "ID": service_id,
        "Port": port,
        "Check": {"TTL": "60s", "Status": status},
    }
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.put("/v1/agent/service/register", json=body)
        assert resp.status_code == 200, resp.text


async def deregister(server: ConsulServer, service_id: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.put(f"/v1/agent/service/deregister/{service_id}")
        assert resp.status_code == 200, resp.text


async def check_pass(server: ConsulServer, service_id: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.put(f"/v1/agent/check/pass/service:{service_id}")
        assert resp.status_code == 200, resp.text


def health_source(client: ConsulClient, **kwargs: object) -> ServiceHealthSource:
    opts: dict[str, object] = {"wait": 2.0, "backoff_base": 0.05, "backoff_cap": 0.2}
    opts.update(kwargs)
    return ServiceHealthSource(client, **opts)  # type: ignore[arg-type]


async def test_single_service_health(client: ConsulClient, consul_server: ConsulServer) -> None:
    await register(consul_server, "web", "web-1", 8080)
    source = health_source(client, service="web")
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        # Items are instances, keyed <node>/<service id>, and carry the instance itself.
        assert rec.ids == ["node1/web-1"]
        instance = source.items()["node1/web-1"]
        assert (instance.service_id, instance.port, instance.status) == ("web-1", 8080, "critical")
        assert rec.changes[0].item == instance

        rec.clear()
        await check_pass(consul_server, "web-1")
        await rec.wait_for("node1/web-1")
        assert source.items()["node1/web-1"].status == "passing"

        rec.clear()
        await register(consul_server, "web", "web-2", 8081, status="passing")
        await rec.wait_for("node1/web-2")
        assert rec.ids == ["node1/web-2"]  # only the instance that changed
        assert sorted(source.items()) == ["node1/web-1", "node1/web-2"]

        rec.clear()
        await deregister(consul_server, "web-1")
        await rec.wait_for("node1/web-1")
        (gone,) = [c for c in rec.changes if c.id == "node1/web-1"]
        assert gone.deleted, rec.changes
        assert gone.item.port == 8080  # the last instance known


async def test_passing_only_hides_failing_instances(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    await register(consul_server, "api", "api-1", 9000)
    source = health_source(client, service="api", passing_only=True)
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        assert dict(source.items()) == {}
        rec.clear()
        await check_pass(consul_server, "api-1")
        await rec.wait_for("node1/api-1")
        assert [i.service_id for i in source.items().values()] == ["api-1"]


async def test_pattern_watches_every_matching_service_with_two_long_polls(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    await register(consul_server, "core-1", "core-1", 1001)
    await register(consul_server, "unrelated", "unrelated", 2000)
    source = health_source(client, pattern=r"core-\d+")
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        assert source.services == {"core-1"}
        assert set(source.items()) == {"node1/core-1"}
        assert rec.ids == ["node1/core-1"]
        # The catalog and the health of all services: two parked queries, not one per service.
        await eventually(lambda: consul_server.stats()["BlockingQueries"] == 2)

        rec.clear()
        await register(consul_server, "core-2", "core-2", 1002)
        await rec.wait_for("node1/core-2")
        assert source.services == {"core-1", "core-2"}

        rec.clear()
        await check_pass(consul_server, "core-2")
        await rec.wait_for("node1/core-2")
        assert source.items()["node1/core-2"].passing
        assert "node1/core-1" not in rec.ids  # only the service whose check changed

        rec.clear()
        await deregister(consul_server, "core-1")
        await rec.wait_for("node1/core-1")
        assert rec.changes[-1].deleted
        assert rec.changes[-1].item.service == "core-1"
        await eventually(lambda: source.services == {"core-2"})
        assert set(source.items()) == {"node1/core-2"}

        rec.clear()
        await register(consul_server, "core-1", "core-1", 1003, status="passing")
        await rec.wait_for("node1/core-1")
        assert source.items()["node1/core-1"].port == 1003
        assert consul_server.stats()["BlockingQueries"] == 2
        # Unrelated services never reach the cache.
        await register(consul_server, "unrelated", "unrelated-2", 2001, status="passing")
        await anyio.sleep(0.2)
        assert all(i.service.startswith("core-") for i in source.items().values())


def test_health_source_needs_exactly_one_selector() -> None:
    with pytest.raises(ValueError):
        ServiceHealthSource(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ServiceHealthSource(object(), service="a", pattern="b")  # type: ignore[arg-type]


async def test_pattern_reuses_the_checks_that_did_not_change(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    """The health long poll hands back the very objects of unchanged checks (same
    ModifyIndex): a wake allocates only what changed, on the real Consul's answers."""
    for i in range(3):
        await register(consul_server, f"core-{i}", f"core-{i}", 1000 + i)
    source = health_source(client, pattern=r"core-\d+")
    rec = Recorder()
    async with running(source, rec):
        with anyio.fail_after(5):
            await source.wait_ready()
        before = {i: source.items()[f"node1/core-{i}"].checks for i in range(3)}
        assert all(c.modify_index for checks in before.values() for c in checks)
        rec.clear()
        await check_pass(consul_server, "core-1")
        await rec.wait_for("node1/core-1")
        after = {i: source.items()[f"node1/core-{i}"].checks for i in range(3)}
        assert source.items()["node1/core-1"].passing
        assert after[1] != before[1]
        states = source._states  # the checks the next answer is decoded against
        for i in (0, 2):
            (check,) = [c for c in before[i] if c.service_id]
            assert states[("node1", check.check_id)].check is check
            assert next(c for c in after[i] if c.service_id) is check


async def test_services_appearing_together_are_read_per_node(
    client: ConsulClient, consul_server: ConsulServer
) -> None:
    """Many new services in one answer cost one filtered catalog read per node, not one read
    each; an instance on a second node is found through that node's read."""
    await register(consul_server, "core-0", "core-0", 1000, status="passing")
    # One answer every 2 s at most: what registers meanwhile comes in one answer.
    source = health_source(client, pattern=r"core-\d+", rate=0.5, burst=1)
    rec = Recorder()
    async with running(source, rec), httpx.AsyncClient(base_url=consul_server.url) as http:
        with anyio.fail_after(5):
            await source.wait_ready()
        before = source.reads
        rec.clear()
        for i in range(1, 31):
            body = {
                "Name": f"core-{i}",
                "ID": f"core-{i}",
                "Port": 1000 + i,
                "Meta": {"user": f"u{i}"},
                "Check": {"TTL": "60s", "Status": "passing"},
            }
            assert (await http.put("/v1/agent/service/register", json=body)).status_code == 200
        other = {
            "Node": "node2",
            "Address": "10.0.0.2",
            "Service": {"ID": "core-7-b", "Service": "core-7", "Port": 2007},
            "Check": {"CheckID": "c7b", "Name": "c", "Status": "passing", "ServiceID": "core-7-b"},
        }
        assert (await http.put("/v1/catalog/register", json=other)).status_code == 200
        wanted = {f"node1/core-{i}" for i in range(31)} | {"node2/core-7-b"}
        with anyio.fail_after(15):
            while set(source.items()) != wanted:
                await anyio.sleep(0.05)
        items = source.items()
        assert all(items[f"node1/core-{i}"].port == 1000 + i for i in range(31))
        assert items["node1/core-12"].meta == {"user": "u12"}
        assert (items["node2/core-7-b"].port, items["node2/core-7-b"].address) == (2007, "10.0.0.2")
        assert all(items[k].passing for k in wanted)
        # 31 names: one read per node and batch (a stray early answer may read a few alone).
        assert source.reads - before <= 8, source.reads - before
