"""The greeter against a hostile world: a misbehaving Consul (the fault API) and hostile input.

Each test breaks the embedded Consul the way production clusters break (5xx and dropped
connections, a leaderless period, an index that goes backwards, slow answers, a session expired
under the leader) or feeds the controller hostile values, and then checks the state of the world:
the KV contents, the metrics, who holds the lock, and that no replica died. Replicas run
in-process; every one is supervised so a crash is recorded and asserted on, instead of tearing
the test down from inside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import REGISTRY

from devstack.consul import ConsulServer
from examples import greeter
from examples.greeter import IN, OUT, Message
from reconciler.clients.consul import ConsulClient, KVEntry, KVOp
from reconciler.clients.errors import ClientError
from reconciler.controller import Context, Controller, ControllerRunner, RunnerOptions
from reconciler.kv import encode
from reconciler.leader import LEADER_PREFIX
from reconciler.manager import Manager, ManagerOptions
from tests.integration.helpers import clients_config, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NAME = greeter.controller.name
LOCK_KEY = f"{LEADER_PREFIX}{NAME}"
SOURCES = (f"kv:{IN}", f"kv:{OUT}")


# -- helpers ------------------------------------------------------------------------------------


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def watch_errors() -> float:
    return sum(sample("reconciler_watch_errors_total", controller=NAME, source=s) for s in SOURCES)


def index_resets(source: str) -> float:
    return sample("reconciler_watch_index_resets_total", controller=NAME, source=source)


def invalid(kind: str) -> float:
    return sample("reconciler_invalid_input_total", controller=NAME, kind=kind)


def expected(name: str, greeting: str) -> bytes:
    return encode(Message(message=f"{greeting}, {name}!"))


def greeting(text: str) -> bytes:
    return encode(greeter.Greeting(greeting=text))


@dataclasses.dataclass
class Replica:
    """One in-process replica; ``crashed`` holds whatever ended its manager early."""

    identity: str
    manager: Manager
    crashed: BaseException | None = None
    finished: bool = False

    @property
    def runner(self) -> ControllerRunner:
        return self.manager.runners[NAME]

    @property
    def leading(self) -> bool:
        return self.runner.is_leader

    @property
    def terms(self) -> int:
        assert self.runner.elector is not None
        return self.runner.elector.terms

    @property
    def alive(self) -> bool:
        return self.crashed is None and not self.finished

    async def http(self, path: str) -> httpx.Response:
        assert self.manager.health is not None
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.get(f"http://127.0.0.1:{self.manager.health.port}{path}")


class Cluster:
    """Replicas of one controller on one Consul, plus a client to poke Consul with."""

    def __init__(self, tg: TaskGroup, server: ConsulServer, consul: ConsulClient) -> None:
        self._tg = tg
        self.server = server
        self.consul = consul
        self.replicas: list[Replica] = []

    async def start(self, identity: str, controller: Controller = greeter.controller) -> Replica:
        manager = Manager(
            [controller],
            options=ManagerOptions(
                # Short: stopping a standby that has queued keys waits out the whole drain
                # timeout (test_failover_processes pins that down).
                metrics_port=0,
                drain_timeout=1.0,
                runner=RunnerOptions(identity=identity),
            ),
            config=clients_config(self.server.address),
        )
        replica = Replica(identity, manager)
        self.replicas.append(replica)
        await self._tg.start(self._supervise, replica)
        return replica

    @staticmethod
    async def _supervise(replica: Replica, *, task_status: TaskStatus[Manager]) -> None:
        # A real process would exit here; record it so the test can say which replica died.
        try:
            await replica.manager.run(task_status=task_status)
        except Exception as exc:
            replica.crashed = exc
        finally:
            replica.finished = True

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and r.leading]

    def assert_nobody_crashed(self) -> None:
        crashed = {r.identity: repr(r.crashed) for r in self.replicas if r.crashed is not None}
        assert not crashed, f"replicas died: {crashed}"
        assert all(not r.finished for r in self.replicas), "a replica stopped on its own"

    async def put(self, key: str, value: bytes) -> None:
        """Write through whatever faults are on (a refused or dropped write was not applied)."""
        with anyio.fail_after(10):
            while True:
                try:
                    if await self.consul.kv_put(key, value):
                        return
                except ClientError:
                    pass
                await anyio.sleep(0.02)

    async def outputs(self) -> dict[str, KVEntry]:
        _, entries = await self.consul.kv_list(OUT)
        return {e.key[len(OUT) :]: e for e in entries}

    async def wait_outputs(self, want: Mapping[str, bytes | None], timeout: float = 10.0) -> None:
        """Until every name has its expected output (None: none), tolerating Consul errors."""

        async def done() -> bool:
            try:
                have = await self.outputs()
            except ClientError:
                return False
            return all(
                (name not in have)
                if value is None
                else (name in have and have[name].value == value)
                for name, value in want.items()
            )

        await eventually(done, timeout=timeout, every=0.02)

    async def lock_session(self) -> str | None:
        _, entry = await self.consul.kv_get(LOCK_KEY)
        return None if entry is None else entry.session


@contextlib.asynccontextmanager
async def cluster(server: ConsulServer) -> AsyncIterator[Cluster]:
    async with (
        ConsulClient(clients_config(server.address).consul) as consul,
        anyio.create_task_group() as tg,
    ):
        c = Cluster(tg, server, consul)
        try:
            yield c
        finally:
            server.clear_faults()
            for replica in c.replicas:
                replica.manager.stop()


async def leader_of(c: Cluster, *starting: str) -> list[Replica]:
    """Start replicas in order, wait until the first leads and every one is ready."""
    first = await c.start(starting[0])
    await eventually(lambda: first.leading, timeout=5)
    replicas = [first] + [await c.start(identity) for identity in starting[1:]]
    await eventually(lambda: all(r.manager.ready for r in replicas), timeout=5)
    return replicas


# -- 1. errors and dropped connections ----------------------------------------------------------


@pytest.mark.timeout(40)
async def test_converges_through_500s_and_dropped_connections(consul_server: ConsulServer) -> None:
    async with cluster(consul_server) as c:
        (a,) = await leader_of(c, "a")
        errors_before = watch_errors()
        reconcile_errors_before = sample(
            "controller_runtime_reconcile_errors_total", controller=NAME
        )
        failed_before = sample(
            "controller_runtime_reconcile_total", controller=NAME, result="error"
        )

        # First every write fails (500 on /v1/txn): reconciles fail, are counted and retried.
        consul_server.set_faults(error_rate=1.0, path_prefix="/v1/txn")
        await c.put(f"{IN}first", greeting("hi"))
        await eventually(
            lambda: (
                sample("controller_runtime_reconcile_errors_total", controller=NAME)
                >= reconcile_errors_before + 2
            ),
            timeout=5,
        )
        assert (await c.outputs()).get("first") is None
        consul_server.clear_faults()

        # Then about half of all requests fail for 3 s: 30% answer 500, 20% lose their connection.
        # The window is fixed: a longer one only lengthens the watches' error backoff (capped at
        # 30 s), which would make the "fresh after healing" check below slow, not different.
        consul_server.set_faults(error_rate=0.3, drop_rate=0.2)
        users = {f"user{i}": f"hello{i}" for i in range(10)}
        for name, text in users.items():
            await c.put(f"{IN}{name}", greeting(text))
            await anyio.sleep(0.15)
        # 3 s of faults after the last input (the puts themselves retry through the faults, and
        # on a loaded machine they can take most of a window counted from before them).
        healed = time.monotonic() + 3.0
        users["first"] = "hi"
        want = {n: expected(n, t) for n, t in users.items()}

        async def converged() -> set[str]:
            try:
                return {n for n, e in (await c.outputs()).items() if e.value == want.get(n)}
            except ClientError:
                return set()

        during: set[str] = set()
        while time.monotonic() < healed:
            during |= await converged()
            await anyio.sleep(0.05)
        c.assert_nobody_crashed()
        assert a.leading, "a leader that renewed within its TTL keeps the lock"
        consul_server.clear_faults()
        healed_at = time.time()
        assert during, "nothing converged while Consul was failing half of the requests"
        await c.wait_outputs(want, timeout=15)

        assert watch_errors() > errors_before
        assert sample("controller_runtime_reconcile_errors_total", controller=NAME) > (
            reconcile_errors_before
        )
        assert (
            sample("controller_runtime_reconcile_total", controller=NAME, result="error")
            > failed_before
        )

        # Once healed, a new change flows through both watches at once, and they say so.
        await c.put(f"{IN}after", greeting("welcome back"))
        await c.wait_outputs({"after": expected("after", "welcome back")}, timeout=5)

        # A watch still in its error backoff (jittered, doubling from 0.2 s) polls again within
        # that delay; a streak of failures during the faults can make it a few seconds.
        def fresh() -> bool:
            return all(
                sample("reconciler_watch_last_success_timestamp_seconds", controller=NAME, source=s)
                >= healed_at
                for s in SOURCES
            )

        await eventually(fresh, timeout=15)
        assert time.time() - healed_at < 15
        assert set(await c.outputs()) == {*users, "after"}
        assert (await a.http("/healthz")).status_code == 200
        assert (await a.http("/readyz")).status_code == 200
        c.assert_nobody_crashed()


# -- 2. no cluster leader -----------------------------------------------------------------------


@pytest.mark.timeout(40)
async def test_leaderless_period_keeps_the_lock_and_convergence_resumes(
    consul_server: ConsulServer,
) -> None:
    async with cluster(consul_server) as c:
        (a,) = await leader_of(c, "a")
        session = await c.lock_session()
        assert session is not None
        errors_before = sample("controller_runtime_reconcile_errors_total", controller=NAME)

        # Slow answers first, so the reconciles of these inputs are still in flight when the
        # cluster loses its leader; they fail, and must be retried once it is back.
        consul_server.set_faults(latency_ms=300)
        users = {"ada": "hi", "bob": "hey", "cy": "yo"}
        for name, text in users.items():
            await c.put(f"{IN}{name}", greeting(text))
        with consul_server.no_leader():
            consul_server.set_faults(latency_ms=0)
            # A replica started during the outage cannot list its sources: not ready.
            b = await c.start("b")
            await anyio.sleep(2.5)
            readyz = await b.http("/readyz")
            assert readyz.status_code == 503
            assert readyz.json()["controllers"][NAME]["sources"] == dict.fromkeys(SOURCES, False)
            # The leader's session outlives a short outage: it neither steps down nor fails
            # health checks, and no second replica claims the lock.
            assert a.leading
            assert not b.leading
            assert (await a.http("/healthz")).status_code == 200
            assert (await b.http("/healthz")).status_code == 200
            assert (await a.http("/readyz")).status_code == 200
            c.assert_nobody_crashed()

        await c.wait_outputs({n: expected(n, t) for n, t in users.items()}, timeout=10)
        assert sample("controller_runtime_reconcile_errors_total", controller=NAME) > errors_before
        await eventually(lambda: b.manager.ready, timeout=15)
        readyz = (await b.http("/readyz")).json()
        assert readyz["controllers"][NAME]["leadership"] == "standby"
        # Same session, same single term: the outage caused no failover.
        assert await c.lock_session() == session
        assert a.terms == 1
        assert b.terms == 0
        await c.put(f"{IN}dee", greeting("hello"))
        await c.wait_outputs({"dee": expected("dee", "hello")}, timeout=5)
        c.assert_nobody_crashed()


@pytest.mark.timeout(30)
async def test_standby_survives_recampaigning_while_consul_has_no_leader(
    consul_server: ConsulServer,
) -> None:
    async with cluster(consul_server) as c:
        a, b = await leader_of(c, "a", "b")
        session = a.runner.elector.session if a.runner.elector else None
        assert session is not None
        with consul_server.no_leader():
            # The leader's session dies while the cluster is leaderless (a common pairing: the
            # server that lost leadership also lost its session timers). Both replicas campaign.
            assert consul_server.expire_session(session)
            await anyio.sleep(2)
            c.assert_nobody_crashed()
        await eventually(lambda: len(c.leaders()) == 1, timeout=10)
        await c.put(f"{IN}ada", greeting("hi"))
        await c.wait_outputs({"ada": expected("ada", "hi")})
        c.assert_nobody_crashed()
        assert b.alive


# -- 3. index reset -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_index_reset_is_counted_and_no_change_is_missed(consul_server: ConsulServer) -> None:
    async with cluster(consul_server) as c:
        a, b = await leader_of(c, "a", "b")
        for name in ("ada", "bob"):
            await c.put(f"{IN}{name}", greeting("hi"))
        await c.wait_outputs({"ada": expected("ada", "hi"), "bob": expected("bob", "hi")})
        resets_before = {s: index_resets(s) for s in SOURCES}
        index_before = consul_server.stats()["Index"]

        # A snapshot restore to an old index. Changes written right after it, before the
        # watches have re-listed, must not be lost.
        assert consul_server.reset_index(to=1) == 1
        assert index_before > 1
        await c.put(f"{IN}carol", greeting("hello"))
        await c.consul.kv_delete(f"{IN}ada")
        await c.put(f"{IN}bob", greeting("bye"))

        # Two replicas' sources share these counters: each source of each replica resets.
        await eventually(
            lambda: all(index_resets(s) >= resets_before[s] + 2 for s in SOURCES), timeout=5
        )
        await c.wait_outputs(
            {"ada": None, "bob": expected("bob", "bye"), "carol": expected("carol", "hello")}
        )
        # Writes after the reset carry indexes below the pre-reset ones; they still wake the
        # watches (nothing is missed while blocking on a stale, higher index).
        await c.put(f"{IN}dan", greeting("later"))
        await c.wait_outputs({"dan": expected("dan", "later")}, timeout=5)
        assert a.leading
        assert not b.leading
        assert a.terms == 1, "the lock watch must survive the reset without a failover"
        c.assert_nobody_crashed()


# -- 4. latency ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_converges_with_200ms_per_request(consul_server: ConsulServer) -> None:
    async with cluster(consul_server) as c:
        a, b = await leader_of(c, "a", "b")
        consul_server.set_faults(latency_ms=200)
        users = {f"slow{i}": "hi" for i in range(4)}
        for name, text in users.items():
            await c.put(f"{IN}{name}", greeting(text))
        # One worker, three requests per reconcile: about 0.6 s per user.
        await c.wait_outputs({n: expected(n, t) for n, t in users.items()}, timeout=15)
        assert a.leading
        assert not b.leading
        assert (a.terms, b.terms) == (1, 0), "slow renewals must not cause a failover"
        c.assert_nobody_crashed()


# -- 5. session expiry under the leader ---------------------------------------------------------


class Gate:
    """Holds the reconcile of one key until opened; remembers which reconciles were cancelled."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.open = anyio.Event()
        self.entered = anyio.Event()
        self.cancelled: list[str] = []

    async def reconcile(self, ctx: Context, name: str) -> None:
        if name == self.key and not self.open.is_set():
            self.entered.set()
            try:
                await self.open.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(ctx.reconcile_id)
                self.entered = anyio.Event()
                raise
        await greeter.reconcile(ctx, name)


@pytest.mark.timeout(30)
async def test_expired_session_cancels_work_and_leadership_is_reacquired(
    consul_server: ConsulServer,
) -> None:
    gate = Gate("slow")
    gated = dataclasses.replace(greeter.controller, reconcile=gate.reconcile)
    async with cluster(consul_server) as c:
        a = await c.start("a", gated)
        await eventually(lambda: a.leading and a.manager.ready, timeout=5)
        await c.put(f"{IN}slow", greeting("finally"))
        with anyio.fail_after(5):
            await gate.entered.wait()
        assert sample("leader_election_master_status", name=NAME) == 1
        assert sample("controller_runtime_active_workers", controller=NAME) == 1
        old = a.runner.elector.session if a.runner.elector else None
        assert old is not None

        seen: list[float] = []

        async def watch_status() -> None:
            while True:
                seen.append(sample("leader_election_master_status", name=NAME))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_status)
            assert consul_server.expire_session(old)
            await eventually(lambda: gate.cancelled, timeout=5)
            # The lock-delay (1 s) keeps the key free but unacquirable; then it is ours again.
            await eventually(lambda: a.terms == 2 and a.leading, timeout=10)
            tg.cancel_scope.cancel()

        assert len(gate.cancelled) == 1, "the in-flight reconcile is cancelled, once"
        assert 0.0 in seen, "leader_election_master_status must drop while not leading"
        assert sample("leader_election_master_status", name=NAME) == 1
        new = await c.lock_session()
        assert new is not None
        assert new != old
        assert (await c.outputs()).get("slow") is None, "the cancelled reconcile wrote nothing"

        # The cancelled key runs again in the new term; once released it converges.
        with anyio.fail_after(5):
            await gate.entered.wait()
        gate.open.set()
        await c.put(f"{IN}other", greeting("hi"))
        await c.wait_outputs(
            {"slow": expected("slow", "finally"), "other": expected("other", "hi")}, timeout=5
        )
        c.assert_nobody_crashed()


@pytest.mark.timeout(30)
async def test_expired_session_hands_the_lock_to_exactly_one_replica(
    consul_server: ConsulServer,
) -> None:
    async with cluster(consul_server) as c:
        a, b = await leader_of(c, "a", "b")
        old = await c.lock_session()
        assert old is not None
        assert consul_server.expire_session(old)
        await eventually(lambda: a.terms + b.terms == 2 and len(c.leaders()) == 1, timeout=10)
        await anyio.sleep(0.5)
        assert len(c.leaders()) == 1, "exactly one replica leads after the expiry"
        assert a.terms + b.terms == 2
        _, entry = await c.consul.kv_get(LOCK_KEY)
        assert entry is not None
        assert entry.session not in (None, old)
        await c.put(f"{IN}zed", greeting("hi"))
        await c.wait_outputs({"zed": expected("zed", "hi")}, timeout=5)
        c.assert_nobody_crashed()


# -- 6. hostile input ---------------------------------------------------------------------------

ODD_BUT_GOOD = ("ada", "a%20b", "zoë", "名前", "with space", "semi;colon?q#f")

# 512 KiB exactly: the largest value Consul accepts; valid JSON, but the greeting is too long.
HUGE = b'{"greeting": "' + b"x" * (512 * 1024 - 16) + b'"}'

HOSTILE: dict[str, tuple[bytes, str]] = {
    "mallory": (b"{not json", "malformed-json"),
    "binary": (b"\xff\xfe\x00\x01", "malformed-json"),
    "trudy": (b'{"greeting": "hi", "admin": true}', "schema"),
    "oscar": (b'{"greeting": 42}', "schema"),
    "array": (b"[]", "schema"),
    "huge": (HUGE, "schema"),
    "blank": (b"", "empty"),
}


@pytest.mark.timeout(30)
async def test_hostile_input_is_counted_and_never_touches_good_users(
    consul_server: ConsulServer,
) -> None:
    assert len(HUGE) == 512 * 1024
    kinds = {kind for _, kind in HOSTILE.values()}
    async with cluster(consul_server) as c:
        (a,) = await leader_of(c, "a")
        for name in ODD_BUT_GOOD:
            await c.put(f"{IN}{name}", greeting("hello"))
        good = {n: expected(n, "hello") for n in ODD_BUT_GOOD}
        await c.wait_outputs(good)
        before = await c.outputs()
        invalid_before = {kind: invalid(kind) for kind in kinds}
        terminal_before = sample(
            "controller_runtime_terminal_reconcile_errors_total", controller=NAME
        )
        panics_before = sample("controller_runtime_reconcile_panics_total", controller=NAME)

        for name, (value, _) in HOSTILE.items():
            await c.put(f"{IN}{name}", value)
        await c.put(f"{IN}late", greeting("hello"))
        await c.wait_outputs({"late": expected("late", "hello")})

        want = {kind: sum(1 for _, k in HOSTILE.values() if k == kind) for kind in kinds}
        await eventually(
            lambda: all(invalid(k) - invalid_before[k] >= n for k, n in want.items()), timeout=5
        )
        await anyio.sleep(0.3)
        assert {k: invalid(k) - invalid_before[k] for k in kinds} == want
        assert sample(
            "controller_runtime_terminal_reconcile_errors_total", controller=NAME
        ) - terminal_before == len(HOSTILE)
        assert sample("controller_runtime_reconcile_panics_total", controller=NAME) == panics_before

        after = await c.outputs()
        assert set(after) == {*ODD_BUT_GOOD, "late"}, "no output for a hostile input"
        for name in ODD_BUT_GOOD:
            assert after[name].modify_index == before[name].modify_index, f"{name} was rewritten"
        assert (await a.http("/healthz")).status_code == 200
        assert (await a.http("/readyz")).status_code == 200

        # A terminal error is not a tombstone: fixing the value converges the user.
        await c.put(f"{IN}mallory", greeting("sorry"))
        await c.wait_outputs({"mallory": expected("mallory", "sorry")})
        c.assert_nobody_crashed()


@pytest.mark.timeout(20)
async def test_dot_segment_names_never_alias_keys_outside_the_prefix(
    consul_server: ConsulServer,
) -> None:
    async with cluster(consul_server) as c:
        await leader_of(c, "a")
        await c.put("examples/greetings", greeting("not yours"))
        await c.consul.txn([KVOp.set(f"{IN}..", greeting("pwned"))])
        await c.put(f"{IN}ada", greeting("hi"))
        await c.wait_outputs({"ada": expected("ada", "hi")})
        await anyio.sleep(0.5)
        dots = (await c.outputs()).get("..")
        assert dots is None or dots.value == expected("..", "pwned"), (
            f"user '..' was converged from another key: {dots.value if dots else None!r}"
        )
        await c.consul.txn([KVOp.delete(f"{IN}..")])
        await c.wait_outputs({"..": None}, timeout=3)
        c.assert_nobody_crashed()
