"""A controller, declared in one place, and the loop that runs it.

A :class:`Controller` is plain data: its name, what it watches (each watch with the mapping from
a changed item to work-queue keys), its reconcile function, its KV models, which clients it
needs, how many workers, how often to resync, and whether it needs leadership.
:class:`ControllerRunner` turns that declaration into running sources, a work queue, workers, a
status writer and (when asked for) a leader elector, and interprets the result contract of
:mod:`reconciler.result` in exactly one place.
"""

from __future__ import annotations

import dis
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog
from pydantic import BaseModel

from reconciler import metrics
from reconciler.clients.consul import ConsulClient, ConsulReader
from reconciler.clients.errors import ClientError, ConfigError, FencingError
from reconciler.context import Clients, Context
from reconciler.index import CacheIndex, IndexFn
from reconciler.kv import KVStore
from reconciler.leader import FencedKV, LeaderElector, LockClient
from reconciler.logging import get_logger
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.result import InvalidValue, Result, TemporaryError, TerminalError
from reconciler.sources.base import Change, Source
from reconciler.status import StatusReport, StatusWriter
from reconciler.workqueue import QueueShutDown, WorkQueue, default_rate_limiter

if TYPE_CHECKING:
    # Imported for types only: boto3 takes a noticeable time to import, and most controllers
    # never need it.
    from reconciler.clients.elb import ELBClient
    from reconciler.clients.nomad import NomadClient

__all__ = [
    "Context",
    "Controller",
    "ControllerRunner",
    "Dependencies",
    "KeyMapper",
    "RunnerOptions",
    "Watch",
    "constant_key",
    "identity_key",
    "item_id",
    "strip_prefix",
]

log = get_logger("reconciler.controller")

KeyMapper = Callable[[Any], Iterable[str]]
"""Maps one observed item (a ``KVEntry``, ``ServiceInstance``, ``Allocation``, ``JobStub``,
``Node``, or a periodic key) to zero or more work-queue keys. For a deletion it gets the last
item known."""


def item_id(item: Any) -> str:
    """The natural id of an item: the string itself, a KV entry's key, a Nomad object's id."""
    if isinstance(item, str):
        return item
    for attr in ("key", "id"):
        value = getattr(item, attr, None)
        if isinstance(value, str):
            return value
    raise TypeError(f"cannot tell the id of {type(item).__name__}; pass to_keys=")


def identity_key(item: Any) -> Iterable[str]:
    """Reconcile each changed item under its own id."""
    return (item_id(item),)


def strip_prefix(prefix: str) -> KeyMapper:
    """Map the KV entry ``<prefix><rest>`` to ``<rest>`` (its first path segment); others to
    nothing.

    ``manticore/requests/data/abc`` with prefix ``manticore/requests/data/`` becomes ``abc``.
    Accepts entries and plain key strings.
    """

    def mapper(item: Any) -> Iterable[str]:
        key = item if isinstance(item, str) else item.key
        if not key.startswith(prefix):
            return ()
        rest = key[len(prefix) :].split("/", 1)[0]
        # "." and ".." cannot be addressed as keys (an HTTP path resolves them): never a key.
        return (rest,) if rest and rest not in (".", "..") else ()

    return mapper


def constant_key(key: str) -> KeyMapper:
    """Map every change to one key: controllers that converge a single aggregate."""

    def mapper(item: Any) -> Iterable[str]:
        return (key,)

    return mapper


class SourceFactory(Protocol):
    """Builds a live source once the manager has clients (declarations stay plain data)."""

    def __call__(self, deps: Dependencies) -> Source: ...


@dataclass(frozen=True)
class Watch:
    """One thing a controller watches and how its changed items become work-queue keys."""

    name: str
    build: SourceFactory
    to_keys: KeyMapper = identity_key
    describe: str = ""
    # Secondary indexes of the cache (``ctx.index(watch, name, value)``): name -> item -> values.
    indexes: Mapping[str, IndexFn] = field(default_factory=dict)


@dataclass
class Dependencies:
    """What the manager hands to source factories and reconciles: the live clients.

    ``consul`` is required (leader election, KV); ``nomad`` and ``elb`` are created only when a
    controller declares it needs them.
    """

    consul: ConsulClient
    nomad: NomadClient | None = None
    elb: ELBClient | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ReconcileFn = Callable[[Context, str], Awaitable[Result | None]]
StartupFn = Callable[[Dependencies], Awaitable[None]]
CLIENTS = frozenset({"consul", "nomad", "elb"})


@dataclass(frozen=True)
class Controller:
    """The declaration of a controller. Wiring is explicit: see ``reconciler list``.

    ``models`` names the KV value models the controller reads or owns (``make schemas``
    publishes each as ``crds-equivalent-schemas/<name>.schema.json``). ``needs`` names the
    clients beside Consul (``nomad``, ``elb``). ``status`` writes
    ``reconciler/status/<name>/<key>`` entries (off for a controller that must not write).
    ``startup`` runs once before the controller starts (validate configuration there: a
    :class:`ConfigError` stops the process with its message).
    """

    name: str
    reconcile: ReconcileFn
    watches: Sequence[Watch]
    workers: int = 1
    resync_period: float | None = 300.0
    needs_leadership: bool = True
    reconcile_timeout: float | None = 120.0
    writes: Sequence[str] = ()
    needs: frozenset[str] = frozenset({"consul"})
    description: str = ""
    models: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    status: bool = True
    startup: StartupFn | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ConfigError(f"controller name {self.name!r} must be [A-Za-z0-9_-]+")
        if self.workers < 1:
            raise ConfigError(f"{self.name}: workers must be >= 1")
        if self.resync_period is not None and self.resync_period <= 0:
            raise ConfigError(f"{self.name}: resync_period must be > 0 or None")
        names = [w.name for w in self.watches]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.name}: watch names must be unique, got {names}")
        unknown = set(self.needs) - CLIENTS
        if unknown:
            raise ConfigError(f"{self.name}: unknown clients in needs: {sorted(unknown)}")

    def undeclared_clients(self) -> set[str]:
        """Clients the reconcile uses (``ctx.nomad``, ``ctx.elb``) that ``needs`` lacks.

        Read from the bytecode of the reconcile and of the functions of its module it calls,
        so a missing declaration fails at start-up rather than at every reconcile.
        """
        used = _attributes_used(self.reconcile, {"nomad", "elb"})
        return used - set(self.needs)


def _attributes_used(fn: Any, wanted: set[str], *, depth: int = 4) -> set[str]:
    """Which of ``wanted`` appear as attribute loads in ``fn`` or what it calls (same module)."""
    found: set[str] = set()
    seen: set[int] = set()

    def visit_code(
        code: types.CodeType, module_globals: Mapping[str, Any], module: str, level: int
    ) -> None:
        if id(code) in seen:
            return
        seen.add(id(code))
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and ins.argval in wanted:
                found.add(str(ins.argval))
            elif ins.opname == "LOAD_GLOBAL" and level < depth:
                target = module_globals.get(str(ins.argval))
                inner = getattr(target, "__wrapped__", target)
                if isinstance(inner, types.FunctionType) and inner.__module__ == module:
                    visit_code(inner.__code__, inner.__globals__, module, level + 1)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                visit_code(const, module_globals, module, level)

    inner = getattr(fn, "__wrapped__", fn)
    code = getattr(inner, "__code__", None)
    if code is not None:
        visit_code(code, getattr(inner, "__globals__", {}), getattr(inner, "__module__", ""), 0)
    return found


@dataclass(frozen=True)
class RunnerOptions:
    identity: str | None = None
    lock_ttl: int = 10
    lock_delay: int = 1
    backoff_cap: float = 300.0
    clock: Clock = SYSTEM_CLOCK


class ControllerRunner:
    """Runs one controller: sources (always), workers (only while leading, when required)."""

    def __init__(
        self, spec: Controller, deps: Dependencies, options: RunnerOptions | None = None
    ) -> None:
        self.spec = spec
        self.deps = deps
        self.options = options or RunnerOptions()
        name = spec.name
        metrics.init_controller(name)
        self.queue = WorkQueue(
            name,
            clock=self.options.clock,
            rate_limiter=default_rate_limiter(
                self.options.clock, max_delay=self.options.backoff_cap
            ),
        )
        self.sources: dict[str, Source] = {w.name: w.build(deps) for w in spec.watches}
        for watch in spec.watches:
            metrics.init_source(name, watch.name)
        missing = spec.undeclared_clients()
        if missing:
            raise ConfigError(
                f"controller {name}: its reconcile uses ctx.{', ctx.'.join(sorted(missing))} "
                f"but needs= does not declare {sorted(missing)}; add them to needs="
            )
        for client in ("nomad", "elb"):
            if client in spec.needs and getattr(deps, client) is None:
                raise ConfigError(f"controller {name} needs a {client} client; none configured")
        self.elector: LeaderElector | None = None
        consul: LockClient = deps.consul
        if spec.needs_leadership:
            self.elector = LeaderElector(
                consul,
                name,
                identity=self.options.identity,
                ttl=self.options.lock_ttl,
                lock_delay=self.options.lock_delay,
                clock=self.options.clock,
            )
        self.writer = FencedKV(consul, name, self.elector)
        self.kv = KVStore(deps.consul, self.writer)
        self.status = StatusWriter(name, deps.consul, self.writer, enabled=spec.status)
        guard = self._guard if self.elector is not None else None
        self.clients = Clients(
            consul=deps.consul,
            reader=ConsulReader(deps.consul),
            nomad=_guarded(deps.nomad, guard) if "nomad" in spec.needs else None,
            elb=_guarded(deps.elb, guard) if "elb" in spec.needs else None,
            declared=spec.needs,
        )
        self._workers_scope: anyio.CancelScope | None = None
        self._m = _RunnerMetrics(name)
        self._m.max_concurrent.set(spec.workers)
        self._mapper_errors = {
            w.name: metrics.MAPPER_ERRORS.labels(controller=name, watch=w.name)
            for w in spec.watches
        }
        self.indexes: dict[str, CacheIndex] = {
            w.name: CacheIndex(w.indexes, self._index_error(w)) for w in spec.watches if w.indexes
        }

    def _index_error(self, watch: Watch) -> Callable[[str, Exception], None]:
        def report(index: str, exc: Exception) -> None:
            self._mapper_errors[watch.name].inc()
            log.error(
                "index function raised; item left out of the index",
                controller=self.spec.name,
                watch=watch.name,
                index=index,
                error=repr(exc),
            )

        return report

    def _guard(self) -> None:
        """Called by guarded Nomad/ELB clients just before a side effect."""
        assert self.elector is not None
        self.elector.fence()

    # -- readiness ---------------------------------------------------------------------------
    @property
    def sources_ready(self) -> bool:
        return all(s.ready for s in self.sources.values())

    @property
    def leadership_known(self) -> bool:
        return self.elector is None or self.elector.state_known

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    @property
    def ready(self) -> bool:
        return self.sources_ready and self.leadership_known

    # -- wiring ------------------------------------------------------------------------------
    def _keys_of(self, watch: Watch, item: Any) -> Iterable[str]:
        try:
            return [str(k) for k in watch.to_keys(item)]
        except Exception as exc:
            self._mapper_errors[watch.name].inc()
            log.error(
                "key mapper raised; item skipped",
                controller=self.spec.name,
                watch=watch.name,
                error=repr(exc),
                exc_info=True,
            )
            return ()

    def _emitter(self, watch: Watch) -> Callable[[Sequence[Change]], None]:
        add = self.queue.add
        keys_of = self._keys_of
        index = self.indexes.get(watch.name)

        def emit(changes: Sequence[Change]) -> None:
            if index is not None:
                index.update(changes)
            for change in changes:
                for key in keys_of(watch, change.item):
                    if key:
                        add(key)
                if change.old is not None:
                    # The keys it mapped to before: an item that moved must leave its old key.
                    for key in keys_of(watch, change.old):
                        if key:
                            add(key)

        return emit

    def resync(self) -> set[str]:
        """Queue every key the caches know of (level-based: nothing is missed for long).

        In the queue's background: they are handed out when no key a change asked for is
        ready, so a resync of every user never delays the users that just changed.
        """
        keys: set[str] = set()
        for watch in self.spec.watches:
            for item in list(self.sources[watch.name].items().values()):
                keys.update(k for k in self._keys_of(watch, item) if k)
        for key in keys:
            self.queue.add(key, background=True)
        return keys

    async def run(self) -> None:
        """Run until cancelled or :meth:`stop` is called."""
        log.info(
            "controller starting",
            controller=self.spec.name,
            workers=self.spec.workers,
            leader_elected=self.elector is not None,
        )
        async with anyio.create_task_group() as tg:
            for watch in self.spec.watches:
                tg.start_soon(self._run_source, watch)
            if self.spec.resync_period:
                tg.start_soon(self._resync_loop, self.spec.resync_period)
            if self.elector is not None:
                await self.elector.run(self._lead)
            else:
                await self._lead()
            tg.cancel_scope.cancel()

    async def _run_source(self, watch: Watch) -> None:
        await self.sources[watch.name].run(self._emitter(watch), controller=self.spec.name)

    async def _resync_loop(self, period: float) -> None:
        clock = self.options.clock
        while True:
            await clock.sleep(period)
            count = len(self.resync())
            log.debug("resync", controller=self.spec.name, keys=count)

    async def _lead(self) -> None:
        """Process the queue until cancelled (leadership lost) or the queue shuts down."""
        for source in self.sources.values():
            await source.wait_ready()
        try:
            await self.status.load()
        except ClientError as exc:
            log.warning("could not read status entries", controller=self.spec.name, error=str(exc))
        # Everything the caches know may have changed while we were not leading.
        live = self.resync()
        try:
            await self.status.prune(live)
        except ClientError as exc:
            log.warning("could not prune status entries", controller=self.spec.name, error=str(exc))
        with anyio.CancelScope() as scope:
            self._workers_scope = scope
            async with anyio.create_task_group() as tg:
                for _ in range(self.spec.workers):
                    tg.start_soon(self._worker)
        self._workers_scope = None

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            self._m.active.inc()
            cancelled = True
            try:
                await self._process(key)
                cancelled = False
            finally:
                self._m.active.dec()
                self.queue.done(key)
                if cancelled and not self.queue.shutting_down:
                    # Cancelled mid-reconcile (leadership lost): run it again next term.
                    self.queue.add(key)

    async def _process(self, key: str) -> None:
        spec = self.spec
        reconcile_id = uuid.uuid4().hex[:16]
        bound = log.bind(controller=spec.name, key=key, reconcile_id=reconcile_id)
        structlog.contextvars.bind_contextvars(
            controller=spec.name, key=key, reconcile_id=reconcile_id
        )
        report = self.status.report(key)
        ctx = Context(
            controller=spec.name,
            key=key,
            reconcile_id=reconcile_id,
            clients=self.clients,
            kv=self.kv,
            status=report,
            sources=self.sources,
            indexes=self.indexes,
            log=bound,
            leading=None if self.elector is None else (lambda: self.is_leader),
        )
        started = time.perf_counter()
        outcome = "success"
        complete = False
        fenced = False
        try:
            with anyio.fail_after(spec.reconcile_timeout):
                result = await spec.reconcile(ctx, key)
        except TerminalError as exc:
            outcome = "error"
            self._m.errors.inc()
            self._m.terminal.inc()
            if isinstance(exc, InvalidValue):
                metrics.INVALID_INPUT.labels(controller=spec.name, kind=exc.kind).inc()
            self.queue.forget(key)
            if isinstance(exc, InvalidValue):
                report.set("Invalid", str(exc), observed_index=exc.index)
            else:
                report.set("Error", str(exc))
            bound.error("reconcile failed terminally; not retrying", error=str(exc))
        except TemporaryError as exc:
            outcome = "error"
            self._m.errors.inc()
            self._retry(key, exc.delay, report, str(exc))
            bound.warning("reconcile not done yet; retrying", error=str(exc), delay=exc.delay)
        except FencingError as exc:
            # Deposed between the lock check and the write: the next leader redoes this key.
            outcome = "error"
            self._m.errors.inc()
            self.queue.add_rate_limited(key)
            fenced = True
            bound.warning("write fenced off: leadership lost", error=str(exc))
        except ClientError as exc:
            # Consul, Nomad or AWS unavailable, slow, throttling or refusing: the world, not a
            # bug. Retry with backoff; the panics counter stays for bugs only.
            outcome = "error"
            self._m.errors.inc()
            self._retry(key, None, report, f"{type(exc).__name__}: {exc}")
            bound.warning("client error; retrying", error=str(exc), kind=type(exc).__name__)
        except ConfigError as exc:
            outcome = "error"
            self._m.errors.inc()
            self._m.terminal.inc()
            self.queue.forget(key)
            report.set("Error", f"misconfigured: {exc}")
            bound.error("controller misconfigured; not retrying this key", error=str(exc))
        except TimeoutError:
            outcome = "error"
            self._m.errors.inc()
            self._retry(key, None, report, f"timed out after {spec.reconcile_timeout}s")
            bound.error("reconcile timed out", timeout=spec.reconcile_timeout)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            # A bug or an unexpected failure: never kill the process, retry with backoff.
            outcome = "error"
            self._m.errors.inc()
            self._m.panics.inc()
            self._retry(key, None, report, f"unexpected {type(exc).__name__}: {exc}")
            bound.exception("reconcile raised an unexpected exception", error=repr(exc))
        else:
            complete = True
            if result is not None and result.requeue_after:
                outcome = "requeue_after"
                self.queue.forget(key)
                self.queue.add_after(key, result.requeue_after)
            elif result is not None and result.requeue:
                outcome = "requeue"
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
            if key not in report.said:
                report.clear()
        finally:
            elapsed = time.perf_counter() - started
            self._m.time.observe(elapsed)
            structlog.contextvars.unbind_contextvars("controller", "key", "reconcile_id")
        self._m.results[outcome].inc()
        if not fenced and (report.said or complete):
            await self.status.apply(report, complete=complete)
        bound.debug("reconciled", result=outcome, seconds=round(elapsed, 6))

    # Failures in a row before a key's status says it is retrying: one blip is not news.
    RETRYING_AFTER = 3

    def _retry(self, key: str, delay: float | None, report: StatusReport, message: str) -> None:
        if delay is not None:
            self.queue.forget(key)
            self.queue.add_after(key, delay)
        else:
            self.queue.add_rate_limited(key)
        if self.queue.num_requeues(key) >= self.RETRYING_AFTER and key not in report.said:
            report.set("Retrying", message)

    # -- shutdown ----------------------------------------------------------------------------
    async def stop(self, drain_timeout: float = 30.0) -> bool:
        """Shut down: no new work, let in-flight reconciles finish, then give up leadership.

        Keys not started yet are dropped (the next leader, or the next start, resyncs
        everything). In-flight reconciles get ``drain_timeout`` seconds to finish; a leader
        still holds its lock meanwhile, so their writes stay fenced and valid. Then a leader
        releases its lock so a standby takes over at once, and whatever still runs is
        cancelled. A standby has nothing in flight and stops at once. Returns False when the
        drain timed out.
        """
        drained = await self.queue.shutdown_with_drain(drain_timeout, discard_ready=True)
        if self.elector is not None:
            await self.elector.release()
        if self._workers_scope is not None:
            self._workers_scope.cancel()
        return drained


def _guarded(client: Any, guard: Callable[[], None] | None) -> Any:
    if client is None or guard is None:
        return client
    return client.guarded(guard)


class _RunnerMetrics:
    """The per-controller metric children, resolved once (labels() is not free)."""

    def __init__(self, name: str) -> None:
        self.results = {
            r: metrics.RECONCILE_TOTAL.labels(controller=name, result=r) for r in metrics.RESULTS
        }
        self.errors = metrics.RECONCILE_ERRORS.labels(controller=name)
        self.terminal = metrics.TERMINAL_RECONCILE_ERRORS.labels(controller=name)
        self.panics = metrics.RECONCILE_PANICS.labels(controller=name)
        self.time = metrics.RECONCILE_TIME.labels(controller=name)
        self.active = metrics.ACTIVE_WORKERS.labels(controller=name)
        self.max_concurrent = metrics.MAX_CONCURRENT_RECONCILES.labels(controller=name)
