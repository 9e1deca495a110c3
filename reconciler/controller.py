"""A controller, declared in one place, and the loop that runs it.

A :class:`Controller` is plain data: its name, what it watches (each watch with the mapping from
a changed item to work-queue keys), its reconcile function, how many workers, how often to resync,
and whether it needs leadership. :class:`ControllerRunner` turns that declaration into running
sources, a work queue, workers and (when asked for) a leader elector, and interprets the result
contract of :mod:`reconciler.result` in exactly one place.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog

from reconciler import metrics
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import ConfigError, FencingError
from reconciler.leader import FencedKV, LeaderElector, LockClient
from reconciler.logging import get_logger
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.result import InvalidValue, Result, TemporaryError, TerminalError
from reconciler.sources.base import Source
from reconciler.workqueue import QueueShutDown, WorkQueue, default_rate_limiter

if TYPE_CHECKING:
    # Imported for types only: boto3 takes a noticeable time to import, and most controllers
    # never need it.
    from reconciler.clients.elb import ELBClient
    from reconciler.clients.nomad import NomadClient

log = get_logger("reconciler.controller")

KeyMapper = Callable[[str], Iterable[str]]


def identity_key(item: str) -> Iterable[str]:
    """Reconcile each changed item under its own id."""
    return (item,)


def strip_prefix(prefix: str) -> KeyMapper:
    """Map ``<prefix><rest>`` to ``<rest>`` (the first path segment of it); others to nothing.

    ``manticore/requests/data/abc`` with prefix ``manticore/requests/data/`` becomes ``abc``.
    """

    def mapper(item: str) -> Iterable[str]:
        if not item.startswith(prefix):
            return ()
        rest = item[len(prefix) :].split("/", 1)[0]
        # "." and ".." cannot be addressed as keys (an HTTP path resolves them): never a key.
        return (rest,) if rest and rest not in (".", "..") else ()

    return mapper


def constant_key(key: str) -> KeyMapper:
    """Map every change to one key: controllers that converge a single aggregate."""

    def mapper(item: str) -> Iterable[str]:
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


ReconcileFn = Callable[["Context", str], Awaitable[Result | None]]


@dataclass(frozen=True)
class Controller:
    """The declaration of a controller. Wiring is explicit: see ``reconciler list``."""

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


@dataclass
class Context:
    """What a reconcile gets besides its key: clients, the fenced KV writer, caches, a logger."""

    controller: str
    reconcile_id: str
    deps: Dependencies
    kv: FencedKV
    sources: Mapping[str, Source]
    log: Any

    @property
    def consul(self) -> ConsulClient:
        return self.deps.consul

    @property
    def nomad(self) -> NomadClient:
        if self.deps.nomad is None:
            raise ConfigError(f"{self.controller}: declare needs={{'consul', 'nomad'}}")
        return self.deps.nomad

    @property
    def elb(self) -> ELBClient:
        if self.deps.elb is None:
            raise ConfigError(f"{self.controller}: declare needs={{'consul', 'elb'}}")
        return self.deps.elb

    def cache(self, watch: str) -> Mapping[str, Any]:
        """The warm cache of one of this controller's watches (by watch name)."""
        return self.sources[watch].items()


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
        self.kv = FencedKV(consul, name, self.elector)
        self._workers_scope: anyio.CancelScope | None = None
        self._m = _RunnerMetrics(name)
        self._m.max_concurrent.set(spec.workers)

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
    def _emitter(self, watch: Watch) -> Callable[[Iterable[str]], None]:
        to_keys = watch.to_keys
        add = self.queue.add

        def emit(items: Iterable[str]) -> None:
            for item in items:
                for key in to_keys(item):
                    add(key)

        return emit

    def resync(self) -> int:
        """Queue every key the caches know of (level-based: nothing is missed for long)."""
        count = 0
        for watch in self.spec.watches:
            emit_keys = watch.to_keys
            for item in list(self.sources[watch.name].items()):
                for key in emit_keys(item):
                    self.queue.add(key)
                    count += 1
        return count

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
            count = self.resync()
            log.debug("resync", controller=self.spec.name, keys=count)

    async def _lead(self) -> None:
        """Process the queue until cancelled (leadership lost) or the queue shuts down."""
        for source in self.sources.values():
            await source.wait_ready()
        # Everything the caches know may have changed while we were not leading.
        self.resync()
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
        ctx = Context(
            controller=spec.name,
            reconcile_id=reconcile_id,
            deps=self.deps,
            kv=self.kv,
            sources=self.sources,
            log=bound,
        )
        started = time.perf_counter()
        outcome = "success"
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
            bound.error("reconcile failed terminally; not retrying", error=str(exc))
        except TemporaryError as exc:
            outcome = "error"
            self._m.errors.inc()
            if exc.delay is not None:
                self.queue.forget(key)
                self.queue.add_after(key, exc.delay)
            else:
                self.queue.add_rate_limited(key)
            bound.warning("reconcile not done yet; retrying", error=str(exc), delay=exc.delay)
        except FencingError as exc:
            # Deposed between the lock check and the write: the next leader redoes this key.
            outcome = "error"
            self._m.errors.inc()
            self.queue.add_rate_limited(key)
            bound.warning("write fenced off: leadership lost", error=str(exc))
        except TimeoutError:
            outcome = "error"
            self._m.errors.inc()
            self.queue.add_rate_limited(key)
            bound.error("reconcile timed out", timeout=spec.reconcile_timeout)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            # A bug or an unexpected failure: never kill the process, retry with backoff.
            outcome = "error"
            self._m.errors.inc()
            self._m.panics.inc()
            self.queue.add_rate_limited(key)
            bound.exception("reconcile raised an unexpected exception", error=repr(exc))
        else:
            if result is not None and result.requeue_after:
                outcome = "requeue_after"
                self.queue.forget(key)
                self.queue.add_after(key, result.requeue_after)
            elif result is not None and result.requeue:
                outcome = "requeue"
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
        finally:
            elapsed = time.perf_counter() - started
            self._m.time.observe(elapsed)
            structlog.contextvars.unbind_contextvars("controller", "key", "reconcile_id")
        self._m.results[outcome].inc()
        bound.debug("reconciled", result=outcome, seconds=round(elapsed, 6))

    # -- shutdown ----------------------------------------------------------------------------
    async def stop(self, drain_timeout: float = 30.0) -> bool:
        """Shut down: no new work, give up leadership at once, then drain what still runs.

        A leader-elected controller releases its lock first so a standby takes over at once;
        releasing cancels its in-flight reconciles, exactly as a lost lock does (they are
        idempotent, and the new leader owns those keys now; any write that raced the release is
        rejected by fencing), so there is nothing left to drain. A controller without leadership
        lets in-flight reconciles finish, bounded by ``drain_timeout``. Returns False when the
        drain timed out.
        """
        self.queue.shutdown()
        if self.elector is not None:
            await self.elector.release()
            drained = True
        else:
            drained = await self.queue.shutdown_with_drain(drain_timeout)
        if self._workers_scope is not None:
            self._workers_scope.cancel()
        return drained


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
