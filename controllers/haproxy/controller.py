"""The haproxy controller: ``haproxy/`` in Consul KV -> the HAProxy beside it (consul-template).

One replica runs on every HAProxy host, not leader-elected (each drives its own HAProxy) and
read-only on Consul (it writes nothing, not even status). Everything it watches converges on one
work key, ``haproxy``: a reconcile reads the whole ``haproxy/`` cache (:mod:`.routes`, validated,
incrementally parsed), plans the change (:mod:`.plan`: runtime commands, or a reload with its
reason) and carries it out (:mod:`.applier`, in a worker thread).

Changes are debounced as consul-template's ``wait`` does: a change is applied once the table has
been quiet for ``MANTICORE_HAPROXY_WAIT_MIN`` seconds, and at the latest
``MANTICORE_HAPROXY_WAIT_MAX`` seconds after the first unapplied change, so a burst of arrivals is
one batch. A periodic key (every few seconds) notices an HAProxy that died (and starts it again),
checks every ``MANTICORE_HAPROXY_VERIFY_INTERVAL`` that the running HAProxy and the files still
match what was applied (drift is repaired by a full reload), and reloads everything every
``MANTICORE_HAPROXY_SAFETY_RELOAD_INTERVAL`` as a safety net.

A configuration that fails validation or that the master rejects keeps the old one serving;
``manticore_haproxy_config_valid`` drops to 0 and the key is retried with backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio

from controllers.api.haproxy import UserRoutes
from controllers.api.ids import HAPROXY_PREFIX
from controllers.haproxy import metrics
from controllers.haproxy.applier import Applier
from controllers.haproxy.plan import Applied, Plan, SlotPolicy, plan, plan_in_place
from controllers.haproxy.process import ConfigInvalid, HAProxyError, ReloadFailed
from controllers.haproxy.routes import KINDS, Rejection, RoutingReader
from controllers.haproxy.runtime import RuntimeAPIError, RuntimeCommandFailed
from controllers.settings import HAProxySettings, settings
from reconciler import metrics as framework_metrics
from reconciler import watches
from reconciler.clients.consul import KVEntry
from reconciler.controller import Context, Controller, Dependencies, constant_key
from reconciler.result import Result, TemporaryError

NAME = "haproxy"
KEY = "haproxy"
WATCH = f"kv:{HAPROXY_PREFIX}"
TICK = "haproxy-tick"
TICK_SECONDS = 5.0
# Backoff between retries of a reload that failed (seconds).
HOLD_MIN = 5.0
HOLD_MAX = 300.0


@dataclass
class Debounce:
    """consul-template's ``wait``: quiet for ``min`` seconds, but never longer than ``max``."""

    min: float
    max: float
    _first_change: float | None = None
    _last_change: float = 0.0

    def changed(self, now: float) -> None:
        self._last_change = now
        if self._first_change is None:
            self._first_change = now

    def remaining(self, now: float) -> float:
        """Seconds to wait before applying what was observed (0: now)."""
        if self._first_change is None:
            return 0.0
        due = min(self._last_change + self.min, self._first_change + self.max)
        return max(0.0, due - now)

    def settled(self) -> None:
        self._first_change = None


@dataclass
class HAProxyRouter:
    """The controller's state on this host: what HAProxy runs, and the clocks of its checks."""

    config: HAProxySettings | None = None
    clock: Callable[[], float] = time.monotonic
    name: str = NAME
    applied: Applied | None = None
    _applier: Applier | None = None
    _reader: RoutingReader | None = None
    _debounce: Debounce | None = None
    _policy: SlotPolicy | None = None
    _recovered: bool = False
    _repair: str | None = None
    _last_reload: float = 0.0
    _last_verify: float = 0.0
    _held_until: float = 0.0
    _fingerprint: tuple[int, int, int] = (-1, 0, 0)
    _hold_seconds: float = 0.0

    # -- setup ------------------------------------------------------------------------------

    def _setup(self) -> tuple[HAProxySettings, Applier, RoutingReader, Debounce, SlotPolicy]:
        if self.config is None:
            self.config = settings().haproxy
        config = self.config
        if self._applier is None:
            self._applier = Applier(config)
        if self._reader is None:
            self._reader = RoutingReader(config)
        if self._debounce is None:
            self._debounce = Debounce(config.wait_min, config.wait_max)
        if self._policy is None:
            self._policy = SlotPolicy(
                http=config.http_slots,
                tcp=config.tcp_slots,
                web=config.web_app_slots,
                tcp_max=len(config.tcp_port_range),
            )
        return config, self._applier, self._reader, self._debounce, self._policy

    @property
    def applier(self) -> Applier:
        return self._setup()[1]

    # -- reconcile --------------------------------------------------------------------------

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        """Converge HAProxy on ``haproxy/`` (one key, one worker: never two at once)."""
        config, applier, reader, debounce, policy = self._setup()
        cache = ctx.cache(WATCH)
        now = self.clock()
        fingerprint = _fingerprint(cache)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            debounce.changed(now)
        current = self.applied
        held = current is not None and now < self._held_until
        # Inside a debounce window nothing is read or planned: a burst of writes costs one
        # table read when it settles, not one per write.
        if current is not None and not held and self._repair is None:
            wait = debounce.remaining(now)
            if wait > 0:
                metrics.PENDING.set(1)
                return Result(requeue_after=wait)

        routing, rejected = reader.read(cache, current=current.routing if current else None)
        self._report(ctx, rejected)

        if not self._recovered:
            self._recovered = True
            current = self.applied = await anyio.to_thread.run_sync(applier.recover)
            if current is not None:
                ctx.log.info("adopted the running HAProxy", generation=current.generation)
                self._last_reload = self._last_verify = now
        elif current is not None and not await anyio.to_thread.run_sync(applier.running):
            ctx.log.warning("HAProxy is not running; starting it again")
            current = self.applied = None
            held = False

        # After a reload failed, the old configuration keeps serving: users keep coming and
        # going within its shape, and the reload is retried with backoff.
        force = None
        if not held:
            force = self._repair
            if force is None and current is not None:
                force = await self._checks(ctx, applier, current, now)
        step = plan(current, routing, policy, mode=config.update_mode, force=force)
        if held and current is not None and step.reload is not None:
            if config.update_mode == "reload":
                return Result(requeue_after=self._held_until - now)
            step = plan_in_place(current, routing)
        if step.nothing_to_do:
            debounce.settled()
            if held:
                return Result(requeue_after=self._held_until - now)
            metrics.PENDING.set(0)
            return None
        metrics.PENDING.set(1)
        if step.reload == "slots" and current is not None and config.update_mode == "runtime":
            # Growing the pools while every route still fits: route this batch over the runtime
            # API first, so users arriving now do not wait for the reload.
            first = plan_in_place(current, routing)
            if first.target.routing == routing and first.ops:
                await self._apply(ctx, applier, current, first)
                current = self.applied
                step = plan(current, routing, policy, mode=config.update_mode)
        debounce.settled()
        if not await self._apply(ctx, applier, current, step):
            assert current is not None
            self._hold(now)
            if config.update_mode == "runtime":
                fallback = plan_in_place(current, routing)
                if not fallback.nothing_to_do:
                    await self._apply(ctx, applier, current, fallback)
            return Result(requeue_after=self._held_until - now)
        if not held:
            metrics.PENDING.set(0)
        return Result(requeue_after=self._held_until - now) if held else None

    def _hold(self, now: float) -> None:
        self._hold_seconds = min(HOLD_MAX, max(HOLD_MIN, 2 * self._hold_seconds))
        self._held_until = now + self._hold_seconds

    async def _checks(
        self, ctx: Context, applier: Applier, current: Applied, now: float
    ) -> str | None:
        """The periodic safety net and drift check: a reason to reload everything, or None."""
        assert self.config is not None
        interval = self.config.safety_reload_interval
        if interval and now - self._last_reload >= interval:
            return "periodic"
        if now - self._last_verify >= self.config.verify_interval:
            self._last_verify = now
            problems = await anyio.to_thread.run_sync(applier.verify, current)
            if problems:
                ctx.log.warning(
                    "HAProxy drifted from what was applied; reloading everything",
                    problems=problems[:10],
                    count=len(problems),
                )
                return "repair"
        return None

    async def _apply(
        self, ctx: Context, applier: Applier, current: Applied | None, step: Plan
    ) -> bool:
        """Carry ``step`` out; False when a reload did not take (the old one keeps serving)."""
        try:
            timings = await anyio.to_thread.run_sync(applier.apply, current, step)
        except (RuntimeCommandFailed, RuntimeAPIError) as exc:
            # HAProxy may be half-updated: only a full reload says for sure what it runs.
            self._repair = "repair"
            raise TemporaryError(f"runtime update failed, reloading everything: {exc}") from exc
        except (ConfigInvalid, ReloadFailed) as exc:
            what = "invalid" if isinstance(exc, ConfigInvalid) else "rejected by the master"
            ctx.log.error(
                f"HAProxy configuration {what}; the previous one keeps serving",
                error=exc.message if isinstance(exc, ConfigInvalid) else str(exc),
                reason=step.reload,
            )
            if current is None:
                raise TemporaryError(f"HAProxy configuration {what}") from exc
            return False
        except HAProxyError as exc:
            raise TemporaryError(str(exc)) from exc
        self.applied = step.target
        if step.reload is not None:
            self._repair = None
            self._hold_seconds = 0.0
            self._held_until = 0.0
            self._last_reload = self._last_verify = self.clock()
        ctx.log.info(
            "HAProxy updated",
            path=timings.path,
            reason=step.reload,
            ops=len(step.ops),
            http_routes=len(step.target.routing.http),
            tcp_routes=len(step.target.routing.tcp),
            seconds=round(timings.total, 4),
        )
        return True

    def declaration(self, *, tick: float = TICK_SECONDS) -> Controller:
        """The :class:`Controller` running this router."""
        for kind in KINDS:
            framework_metrics.INVALID_INPUT.labels(controller=self.name, kind=kind)
        return Controller(
            name=self.name,
            description="haproxy/ (haproxy-kv's routes) -> the HAProxy on this host: maps and "
            "slots over the runtime API, validated hitless reloads when the shape changes",
            reconcile=self.reconcile,
            watches=[
                watches.kv(HAPROXY_PREFIX, to_keys=constant_key(KEY)),
                watches.periodic([KEY], every=tick, name=TICK),
            ],
            writes=["HAProxy on this host (configuration, maps, runtime API); nothing in Consul"],
            models={"haproxy-user-routes": UserRoutes},
            workers=1,
            resync_period=None,
            needs_leadership=False,
            reconcile_timeout=300,
            status=False,
            startup=self.startup,
        )

    async def startup(self, deps: Dependencies) -> None:
        """Read and check the settings, the template and the paths before anything runs."""
        self._setup()

    def _report(self, ctx: Context, rejected: list[Rejection]) -> None:
        for rejection in rejected:
            framework_metrics.INVALID_INPUT.labels(controller=self.name, kind=rejection.kind).inc()
            ctx.log.warning(
                "haproxy/ value rejected: not routed",
                kv_key=rejection.key,
                kind=rejection.kind,
                error=rejection.message,
            )


def _fingerprint(cache: Mapping[str, KVEntry]) -> tuple[int, int, int]:
    """Changes whenever a key under ``haproxy/`` is written, added or removed (Consul's
    ModifyIndex only grows), at a fraction of the cost of reading the table."""
    indexes = [entry.modify_index for entry in cache.values()]
    return len(indexes), sum(indexes), max(indexes, default=0)


def build_controller(
    config: HAProxySettings | None = None, *, name: str = NAME, tick: float = TICK_SECONDS
) -> Controller:
    """The controller declaration; ``config`` defaults to the environment (read at first use).

    Tests and benchmarks build their own, each with its config directory and ports
    (:meth:`HAProxyRouter.declaration` when they need the router too).
    """
    return HAProxyRouter(config=config, name=name).declaration(tick=tick)


controller = build_controller()
