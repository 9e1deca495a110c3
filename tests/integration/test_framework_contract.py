"""Regression tests for what real controllers need of the framework, against the embedded
Consul and Nomad: mappers that see objects, typed KV helpers, status entries, honest error
accounting, fencing by default, rate-limited leader loops, and drain on shutdown."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict

from reconciler import watches
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient, KVEntry, KVOp
from reconciler.clients.errors import ConfigError, FencingError, Unavailable
from reconciler.clients.nomad import NomadClient
from reconciler.controller import (
    Context,
    Controller,
    ControllerRunner,
    Dependencies,
    constant_key,
)
from reconciler.kv import encode
from reconciler.leader import FencedKV, LeaderElector
from reconciler.manager import Manager, ManagerOptions
from reconciler.result import InvalidValue
from reconciler.status import StatusEntry
from tests.integration.helpers import clients_config, eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

_n = itertools.count()
ROOT = Path(__file__).resolve().parents[2]


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_n)}"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int


@pytest.fixture
async def consul(consul_server) -> AsyncIterator[ConsulClient]:
    async with ConsulClient(clients_config(consul_server.address).consul) as client:
        yield client


async def status_of(consul: ConsulClient, controller: str, key: str) -> StatusEntry | None:
    _, entry = await consul.kv_get(f"reconciler/status/{controller}/{key}")
    return None if entry is None else StatusEntry.model_validate_json(entry.value or b"")


# ----------------------------------------------------------------------------- mappers


async def test_mappers_get_the_item_and_its_last_state_on_deletion_and_may_raise(
    consul_server, consul: ConsulClient
) -> None:
    name = unique("mapper")
    prefix = f"{name}/in/"
    seen: list[tuple[str, bytes | None]] = []
    reconciled: list[str] = []

    def to_keys(entry: KVEntry) -> list[str]:
        if entry.value == b"boom":
            raise RuntimeError("mapper bug")
        seen.append((entry.key, entry.value))
        # Zero or several keys per item.
        return [] if entry.value == b"skip" else [entry.key.rsplit("/", 1)[1], "all"]

    async def reconcile(ctx: Context, key: str) -> None:
        reconciled.append(key)

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.kv(prefix, to_keys=to_keys)],
        needs_leadership=False,
        resync_period=0.3,
    )
    async with running([controller], consul_server.address) as (manager, _):
        await consul.kv_put(prefix + "a", b"1")
        await consul.kv_put(prefix + "bad", b"boom")
        await consul.kv_put(prefix + "quiet", b"skip")
        await eventually(lambda: {"a", "all"} <= set(reconciled))
        await eventually(
            lambda: (
                sample("reconciler_mapper_errors_total", controller=name, watch=f"kv:{prefix}") >= 2
            )  # the change, then at least one resync: counted, never fatal
        )
        assert "bad" not in reconciled
        assert "quiet" not in reconciled
        await consul.kv_delete(prefix + "a")
        # The deletion reaches the mapper with the last value known.
        await eventually(lambda: seen.count((prefix + "a", b"1")) >= 2)
        assert manager.ready


# ----------------------------------------------------------------------------- typed KV


async def test_kv_store_writes_only_changes_and_retries_cas_conflicts(consul_server) -> None:
    name = unique("store")
    key = f"{name}/value"
    results: dict[str, Any] = {}
    other = ConsulClient(clients_config(consul_server.address).consul)

    async def reconcile(ctx: Context, _: str) -> None:
        results["first"] = await ctx.kv.put_if_changed(key, Item(n=1))
        _, before = await ctx.consul.kv_get(key)
        results["again"] = await ctx.kv.put_if_changed(key, Item(n=1))
        _, after = await ctx.consul.kv_get(key)
        results["index_kept"] = before is not None and after is not None
        results["index_kept"] &= before.modify_index == after.modify_index  # type: ignore[union-attr]
        attempts = Counter[str]()

        async def racing_writer() -> None:
            await other.kv_put(key, encode(Item(n=100)))

        def bump(current: Item | None) -> Item:
            attempts["calls"] += 1
            assert current is not None
            return Item(n=current.n + 1)

        # Someone else writes between our read and our CAS: the update is retried on the new
        # value, never lost and never overwriting theirs.
        real_read = ctx.kv.read
        raced = False

        async def read_then_race(k: str, model: type[Item]) -> Any:
            nonlocal raced
            got = await real_read(k, model)
            if not raced:
                raced = True
                await racing_writer()
            return got

        ctx.kv.read = read_then_race  # type: ignore[method-assign]
        try:
            results["updated"] = await ctx.kv.update(key, Item, bump)
        finally:
            del ctx.kv.read
        results["attempts"] = attempts["calls"]
        results["deleted"] = await ctx.kv.delete_if_present(key)
        results["deleted_again"] = await ctx.kv.delete_if_present(key)
        await ctx.kv.put(key, b"not json")
        try:
            await ctx.kv.update(key, Item, bump)
        except InvalidValue as exc:
            results["invalid"] = exc.kind
        await ctx.kv.delete(key)

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.periodic(["once"], every=3600)],
        resync_period=None,
    )
    async with other, running([controller], consul_server.address):
        await eventually(lambda: "invalid" in results, timeout=15)
    assert results["first"] is True
    assert results["again"] is False
    assert results["index_kept"] is True
    assert results["updated"] == Item(n=101)  # 100 (theirs) + 1, not 1 + 1
    assert results["attempts"] == 2
    assert results["deleted"] is True
    assert results["deleted_again"] is False
    assert results["invalid"] == "malformed-json"
    # Every write above went through the fence.
    assert sample("reconciler_fenced_writes_total", controller=name, outcome="committed") >= 4


async def test_kv_store_takes_a_watchs_view_for_no_more_than_its_cas(consul_server) -> None:
    """``seen=``: equal bytes cost no request, a current view one CAS, a stale view a failed
    CAS then a read; a view saying absent deletes nothing (the watch brings the key back)."""
    name = unique("seen")
    key = f"{name}/value"
    results: dict[str, Any] = {}

    async def reconcile(ctx: Context, _: str) -> None:
        reads = Counter[str]()
        real_get = ctx.kv.get

        async def counted_get(k: str) -> KVEntry | None:
            reads["get"] += 1
            return await real_get(k)

        ctx.kv.get = counted_get  # type: ignore[method-assign]
        try:
            await ctx.kv.put(key, encode(Item(n=1)))
            first = await real_get(key)
            assert first is not None
            results["equal"] = await ctx.kv.put_if_changed(key, Item(n=1), seen=first)
            after = await real_get(key)
            results["equal_index"] = after is not None and after.modify_index == first.modify_index
            results["equal_reads"] = reads["get"]
            results["current"] = await ctx.kv.put_if_changed(key, Item(n=2), seen=first)
            results["current_reads"] = reads["get"]
            # ``first`` is stale now: its CAS fails, then a read and a write.
            results["stale"] = await ctx.kv.put_if_changed(key, Item(n=3), seen=first)
            results["stale_reads"] = reads["get"]
            now = await real_get(key)
            results["value"] = now.value if now else None
            results["absent"] = await ctx.kv.delete_if_present(key, seen=None)
            results["absent_kept"] = await real_get(key) is not None
            results["deleted"] = await ctx.kv.delete_if_present(key, seen=first)
            results["gone"] = await real_get(key) is None
            results["delete_reads"] = reads["get"]
        finally:
            del ctx.kv.get
        results["done"] = True

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.periodic(["once"], every=3600)],
        resync_period=None,
    )
    async with running([controller], consul_server.address):
        await eventually(lambda: "done" in results, timeout=15)
    assert results["equal"] is False
    assert results["equal_index"] is True
    assert results["equal_reads"] == 0
    assert results["current"] is True
    assert results["current_reads"] == 0
    assert results["stale"] is True
    assert results["stale_reads"] == 1
    assert results["value"] == encode(Item(n=3))
    assert results["absent"] is False
    assert results["absent_kept"] is True
    assert results["deleted"] is True  # the stale view's CAS failed; the read found it
    assert results["gone"] is True
    assert results["delete_reads"] == 2


# ----------------------------------------------------------------------------- status entries


async def test_status_entries_report_and_clean_up_after_themselves(
    consul_server, consul: ConsulClient
) -> None:
    name = unique("status")
    prefix = f"{name}/in/"

    async def reconcile(ctx: Context, key: str) -> None:
        if key == "all":
            # An aggregate: one reconcile over every input, reporting bad ones per input.
            for entry in await ctx.kv.list(prefix):
                ctx.parse(Item, entry, report_as=entry.key.rsplit("/", 1)[1])
            return
        await ctx.kv.read(prefix + key, Item)  # invalid: a terminal error, reported by the runner

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.kv(prefix), watches.kv(prefix, to_keys=constant_key("all"), name="agg")],
    )
    async with running([controller], consul_server.address):
        await consul.kv_put(prefix + "u1", b'{"n": "x"}')
        await consul.kv_put(prefix + "u2", b'{"n": 2}')

        async def u1_invalid() -> bool:
            status = await status_of(consul, name, "u1")
            return status is not None and status.phase == "Invalid"

        await eventually(u1_invalid)
        status = await status_of(consul, name, "u1")
        assert status is not None
        assert "n" in status.message
        assert status.observed_index
        assert await status_of(consul, name, "u2") is None
        assert sample("reconciler_invalid_input_total", controller=name, kind="schema") >= 2

        # Fixed: the entry goes, both the per-key one and the aggregate's report.
        await consul.kv_put(prefix + "u1", b'{"n": 1}')
        await eventually(lambda: _no_status(consul, name))

        # Broken again, then the input disappears: the entry goes with it.
        await consul.kv_put(prefix + "u2", b"{")
        await eventually(lambda: _has_status(consul, name, "u2"))
        await consul.kv_delete(prefix + "u2")
        await eventually(lambda: _no_status(consul, name))


async def _no_status(consul: ConsulClient, controller: str) -> bool:
    return not await consul.kv_keys(f"reconciler/status/{controller}/")


async def _has_status(consul: ConsulClient, controller: str, key: str) -> bool:
    return await status_of(consul, controller, key) is not None


async def test_a_new_leader_prunes_status_entries_nobody_owns(
    consul_server, consul: ConsulClient
) -> None:
    name = unique("prune")
    stale = StatusEntry(phase="Error", message="old", time="2026-01-01T00:00:00Z", owner="gone")
    await consul.kv_put(f"reconciler/status/{name}/gone", encode(stale))

    async def reconcile(ctx: Context, key: str) -> None:
        return None

    controller = Controller(
        name=name, reconcile=reconcile, watches=[watches.kv(f"{name}/in/")], resync_period=None
    )
    async with running([controller], consul_server.address):
        await eventually(lambda: _no_status(consul, name))


# ----------------------------------------------------------------------------- errors


async def test_client_errors_are_temporary_errors_not_panics(consul_server) -> None:
    name = unique("errors")
    attempts = Counter[str]()

    async def reconcile(ctx: Context, key: str) -> None:
        attempts[key] += 1
        if attempts[key] <= 3:
            raise Unavailable("Nomad: HTTP 503: no leader")

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.periodic(["k"], every=3600)],
        needs_leadership=False,
        resync_period=None,
    )
    async with running([controller], consul_server.address):
        await eventually(
            lambda: (
                sample("controller_runtime_reconcile_total", controller=name, result="success") == 1
            )
        )
    assert sample("controller_runtime_reconcile_errors_total", controller=name) == 3
    assert sample("controller_runtime_reconcile_panics_total", controller=name) == 0


async def _uses_nomad(ctx: Context, key: str) -> None:
    await ctx.nomad.list_jobs()


def test_a_reconcile_using_an_undeclared_client_fails_at_start_up() -> None:
    controller = Controller(name=unique("undeclared"), reconcile=_uses_nomad, watches=[])
    assert controller.undeclared_clients() == {"nomad"}
    with pytest.raises(ConfigError, match=r"uses ctx\.nomad.*needs="):
        ControllerRunner(controller, Dependencies(consul=None))  # type: ignore[arg-type]
    declared = Controller(
        name=unique("declared"),
        reconcile=_uses_nomad,
        watches=[],
        needs=frozenset({"consul", "nomad"}),
    )
    assert declared.undeclared_clients() == set()


def test_the_cli_refuses_to_start_such_a_controller(tmp_path: Path, consul_server) -> None:
    module = tmp_path / "undeclared_mod.py"
    module.write_text(
        "from reconciler.controller import Controller\n"
        "async def reconcile(ctx, key):\n"
        "    await ctx.elb.describe_load_balancers()\n"
        "controller = Controller(name='undeclared-cli', reconcile=reconcile, watches=[])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "--import", "undeclared_mod", "run",
         "undeclared-cli", "--metrics-addr", "127.0.0.1:0"],
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "CONSUL_HTTP_ADDR": consul_server.address,
             "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "uses ctx.elb" in proc.stderr


# ----------------------------------------------------------------------------- fencing


async def test_a_leaders_context_is_fenced_by_default(consul_server, nomad_server) -> None:
    name = unique("fenced")
    results: dict[str, Any] = {}
    gate = anyio.Event()

    async def reconcile(ctx: Context, key: str) -> None:
        results["read_only"] = not hasattr(ctx.consul, "kv_put") and not hasattr(ctx.consul, "txn")
        results["escape_hatch"] = hasattr(ctx.unfenced_consul, "kv_put")
        await gate.wait()  # deposed while waiting
        try:
            await ctx.nomad.register_job(
                {"ID": "fenced-job", "Name": "fenced-job", "Datacenters": ["dc1"],
                 "Type": "batch", "TaskGroups": []}
            )  # fmt: skip
        except FencingError as exc:
            results["nomad"] = str(exc)
        try:
            await ctx.kv.put(f"{name}/out", b"late")
        except FencingError:
            results["kv"] = "fenced"

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.periodic(["k"], every=3600)],
        needs=frozenset({"consul", "nomad"}),
        resync_period=None,
    )
    config = ClientsConfig.from_env(
        {"CONSUL_HTTP_ADDR": consul_server.address, "NOMAD_ADDR": nomad_server.url}
    )
    manager = Manager([controller], options=ManagerOptions(metrics_port=0), config=config)
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        runner = manager.runners[name]
        await eventually(lambda: "read_only" in results)
        assert runner.elector is not None
        session = runner.elector.session
        assert session is not None
        # The replica stops leading (the renew loop or lock watch noticed) while the reconcile
        # still runs: every side effect it tries afterwards is refused.
        runner.elector._set_leading(False)
        gate.set()
        await eventually(lambda: "kv" in results)
        manager.stop()
    assert results["read_only"] is True
    assert results["escape_hatch"] is True
    assert "not the leader" in results["nomad"]
    async with NomadClient(config.nomad) as nomad:
        assert await nomad.get_job("fenced-job") is None


# ----------------------------------------------------------------------------- leader loops


class InstantLock:
    """A lock client whose lock key is always held by someone else and whose blocking reads
    return at once (a misbehaving or restarting server)."""

    def __init__(self) -> None:
        self.reads = 0

    async def session_create(self, name: str, **_: Any) -> str:
        return "ours"

    async def session_renew(self, session_id: str) -> object:
        return object()

    async def session_destroy(self, session_id: str) -> bool:
        return True

    async def kv_get(self, key: str, *, consistent: bool = False) -> tuple[int, KVEntry | None]:
        return 1, KVEntry(key=key, value=b"", session="theirs")

    async def kv_get_blocking(
        self, key: str, *, index: int, wait: float | None = None
    ) -> tuple[int, KVEntry | None]:
        self.reads += 1
        await anyio.lowlevel.checkpoint()
        return self.reads, KVEntry(key=key, value=b"", session="theirs", modify_index=self.reads)

    async def kv_put(self, key: str, value: Any, **_: Any) -> bool:
        return False

    async def txn(self, ops: Any) -> Any:
        raise AssertionError("a standby never writes")


async def test_a_standbys_lock_watch_is_rate_limited() -> None:
    lock = InstantLock()
    elector = LeaderElector(lock, unique("ratelimit"), watch_rate=10, watch_burst=5)  # type: ignore[arg-type]

    async def lead() -> None:
        raise AssertionError("never leads")

    with anyio.move_on_after(1.0):
        await elector.run(lead)
    # 5 at once, then 10/s: about 15 in one second, not thousands.
    assert 5 <= lock.reads <= 20, lock.reads


# ----------------------------------------------------------------------------- drain


async def test_shutdown_lets_a_leaders_in_flight_reconcile_finish_then_hands_over(
    consul_server, consul: ConsulClient
) -> None:
    name = unique("drain")
    started = anyio.Event()

    async def reconcile(ctx: Context, key: str) -> None:
        started.set()
        await anyio.sleep(0.5)
        await ctx.kv.put(f"{name}/out", b"finished")  # still leading: fenced, and accepted

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[watches.periodic(["k"], every=3600)],
        resync_period=None,
    )
    leader = Manager(
        [controller],
        options=ManagerOptions(metrics_port=0, drain_timeout=5),
        config=clients_config(consul_server.address),
    )
    standby = Manager(
        [controller],
        options=ManagerOptions(metrics_port=0, drain_timeout=5),
        config=clients_config(consul_server.address),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(leader.run)
        with anyio.fail_after(10):
            await started.wait()
        await tg.start(standby.run)
        t0 = time.monotonic()
        leader.stop()
        await eventually(lambda: leader._stopped_cleanly is not None, timeout=10)
        assert leader._stopped_cleanly is True
        _, out = await consul.kv_get(f"{name}/out")
        assert out is not None
        assert out.value == b"finished"
        # Then the lock was released, so the standby took over without waiting for a TTL.
        await eventually(lambda: standby.runners[name].is_leader, timeout=5)
        assert time.monotonic() - t0 < 5
        # A standby's own stop does not wait for anything.
        t1 = time.monotonic()
        other = standby
        other.stop()
        await eventually(lambda: other._stopped_cleanly is not None, timeout=10)
        assert time.monotonic() - t1 < 3
        tg.cancel_scope.cancel()


async def test_fenced_kv_refuses_writes_without_leadership() -> None:
    lock = InstantLock()
    elector = LeaderElector(lock, unique("nofence"))  # type: ignore[arg-type]
    kv = FencedKV(lock, elector.controller, elector)  # type: ignore[arg-type]
    assert kv.fenced
    with pytest.raises(FencingError, match="not the leader"):
        await kv.apply([KVOp.set("x", b"1")])  # InstantLock.txn would fail the test if reached


# ----------------------------------------------------------------------------- indexes


async def test_a_watch_index_finds_a_users_items_and_follows_changes(
    consul_server, consul: ConsulClient
) -> None:
    name = unique("index")
    prefix = f"{name}/in/"
    found: dict[str, list[str]] = {}

    def owner(entry: KVEntry) -> list[str]:
        if entry.value == b"boom":
            raise RuntimeError("index bug")
        return [entry.text.split(":")[0]]

    async def reconcile(ctx: Context, key: str) -> None:
        found[key] = sorted(e.key for e in ctx.index(f"kv:{prefix}", "owner", key))
        found["*"] = sorted(ctx.index_values(f"kv:{prefix}", "owner"))

    controller = Controller(
        name=name,
        reconcile=reconcile,
        watches=[
            watches.kv(prefix, to_keys=lambda e: [e.text.split(":")[0]], indexes={"owner": owner})
        ],
        needs_leadership=False,
    )
    async with running([controller], consul_server.address):
        await consul.kv_put(prefix + "1", b"ada:x")
        await consul.kv_put(prefix + "2", b"ada:y")
        await consul.kv_put(prefix + "3", b"bob:z")
        await eventually(lambda: found.get("ada") == [prefix + "1", prefix + "2"])
        await eventually(lambda: found.get("bob") == [prefix + "3"])
        # An item that moves to another value leaves the old one; a deleted one leaves.
        await consul.kv_put(prefix + "2", b"bob:y")
        await eventually(lambda: found.get("bob") == [prefix + "2", prefix + "3"])
        await eventually(lambda: found.get("ada") == [prefix + "1"])
        await consul.kv_delete(prefix + "1")
        await eventually(lambda: found.get("ada") == [])
        await eventually(lambda: found.get("*") == ["bob"])
        # An index function that raises leaves that item out and is counted.
        await consul.kv_put(prefix + "4", b"boom")
        await eventually(
            lambda: (
                sample("reconciler_mapper_errors_total", controller=name, watch=f"kv:{prefix}") >= 1
            )
        )
        await consul.kv_put(prefix + "5", b"bob:w")
        await eventually(lambda: found.get("bob") == [prefix + "2", prefix + "3", prefix + "5"])
