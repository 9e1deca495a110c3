"""Watch the health of Consul services: one by name, or every service whose name matches.

The allocations controller needs to know when a user's core or HMI instance becomes passing,
moves, or goes away, for every user at once. Items are service *instances*, keyed
``<node>/<service id>``, each a :class:`ServiceInstance` with its tags, meta, node, address, port
and aggregated check status, so a key mapper can route an instance by what it carries (the user
in its meta) and still has it when the instance is deregistered.

One service (``service=``) is one blocking query on ``/v1/health/service/:name``.

A family of services (``pattern=``) must not cost a connection per service: Consul allows 200
connections per client address and a long poll holds one for minutes, so a watch per user would
exhaust the client's pool (and the agent) at a few dozen users. Instead the source holds exactly
two long polls whatever the number of services:

* ``/v1/health/state/any``: every check of the datacenter (optionally narrowed by a server-side
  ``filter``), diffed client-side into the set of services whose checks changed;
* ``/v1/catalog/services``: names and tags, for services that appear, disappear or carry no
  check.

Only the services those two say changed are then read with short, non-blocking
``/v1/health/service/:name`` requests, at most ``read_concurrency`` at a time, so writes and
session renewals sharing the client's short-request pool never wait behind them for long. A
re-registration that changes an instance's address without touching its checks or tags is
invisible to both long polls; ``relist_every`` (10 min by default) re-reads every matching
service to bound how long such a change can go unseen.

Check ``Output`` is ignored when comparing, so a chatty HTTP check does not wake the controller
while its status stays the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Protocol

import anyio

from reconciler import metrics
from reconciler.clients.consul import CheckState, ServiceInstance
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.sources._watch import (
    DEFAULT_WAIT,
    PollSettings,
    WatchBase,
    poll_forever,
    replace_items,
)
from reconciler.sources.base import Change, Emit

log = logging.getLogger(__name__)


class HealthReader(Protocol):
    """What :class:`ServiceHealthSource` needs of a Consul client (``ConsulClient`` has it)."""

    async def health_service(
        self, name: str, *, passing: bool = False, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[ServiceInstance]]: ...

    async def health_state(
        self,
        state: str = "any",
        *,
        filter: str | None = None,
        index: int = 0,
        wait: float | None = None,
    ) -> tuple[int, list[CheckState]]: ...

    async def catalog_services(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[int, dict[str, list[str]]]: ...


def instance_id(instance: ServiceInstance) -> str:
    """The cache key of an instance: unique across nodes, stable across re-registrations."""
    return f"{instance.node}/{instance.service_id}"


class ServiceHealthSource(WatchBase):
    """Health of one service (``service=``) or of every service matching ``pattern=``.

    ``pattern`` is a regular expression matched against the whole service name
    (``re.fullmatch``). ``passing_only`` keeps only instances whose checks all pass, as
    ``?passing`` does. ``server_filter`` is an optional Consul filter expression sent with the
    ``/v1/health/state/any`` poll to cut its size on large clusters (for example
    ``ServiceName matches "^core-hmi-"``); matching is always also done client-side. In
    pattern mode the source is ready once both long polls and the first read of every service
    matching at that time have succeeded.
    """

    def __init__(
        self,
        client: HealthReader,
        *,
        service: str | None = None,
        pattern: str | re.Pattern[str] | None = None,
        passing_only: bool = False,
        server_filter: str | None = None,
        read_concurrency: int = 2,
        relist_every: float | None = 600.0,
        name: str | None = None,
        wait: float = DEFAULT_WAIT,
        rate: float = 10.0,
        burst: int = 10,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (service is None) == (pattern is None):
            raise ValueError("give exactly one of service= or pattern=")
        if read_concurrency < 1:
            raise ValueError("read_concurrency must be >= 1")
        self.service = service
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.passing_only = passing_only
        self.server_filter = server_filter
        self.read_concurrency = read_concurrency
        self.relist_every = relist_every
        what = service if service is not None else f"/{self.pattern.pattern}/"  # type: ignore[union-attr]
        super().__init__(name or f"health:{what}")
        self._client = client
        self.settings = PollSettings(
            wait=wait,
            rate=rate,
            burst=burst,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            clock=clock,
        )
        # Pattern mode: what the two long polls last said, per matching service name.
        self._catalog: dict[str, tuple[str, ...]] | None = None
        self._check_sigs: dict[str, frozenset[tuple[str, str, str, str]]] | None = None
        self._node_sigs: dict[str, frozenset[tuple[str, str]]] = {}
        self._by_service: dict[str, dict[str, ServiceInstance]] = {}
        self._dirty: set[str] = set()
        self._wake = anyio.Event()
        self._limiter: anyio.CapacityLimiter | None = None
        self.reads = 0

    def matches(self, service: str) -> bool:
        if self.service is not None:
            return service == self.service
        assert self.pattern is not None
        return self.pattern.fullmatch(service) is not None

    @property
    def services(self) -> frozenset[str]:
        """The matching services currently known (pattern mode)."""
        return frozenset(self._catalog or ())

    def _keep(self, instances: Iterable[ServiceInstance]) -> dict[str, ServiceInstance]:
        return {instance_id(i): i for i in instances if not self.passing_only or i.passing}

    async def run(self, emit: Emit, *, controller: str) -> None:
        metrics.init_source(controller, self.name)
        if self.service is not None:
            await self._watch_one(self.service, emit, controller)
            return
        self._limiter = anyio.CapacityLimiter(self.read_concurrency)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_catalog, controller)
            tg.start_soon(self._watch_checks, controller)
            if self.relist_every:
                tg.start_soon(self._relist_loop)
            await self._refresh_loop(emit, controller)

    # -- one service -------------------------------------------------------------------------
    async def _watch_one(self, service: str, emit: Emit, controller: str) -> None:
        async def fetch(index: int) -> tuple[int, list[ServiceInstance]]:
            return await self._client.health_service(
                service, passing=self.passing_only, index=index, wait=self.settings.wait
            )

        def apply(instances: list[ServiceInstance]) -> None:
            changes = replace_items(self._items, self._keep(instances))
            self._set_ready(controller)
            self._emit(emit, controller, changes)

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what=f"health {service}",
        )

    # -- a pattern: two long polls, then short reads of what changed -------------------------
    def _mark(self, names: Iterable[str]) -> None:
        before = len(self._dirty)
        self._dirty.update(names)
        if len(self._dirty) != before:
            self._wake.set()

    async def _watch_catalog(self, controller: str) -> None:
        async def fetch(index: int) -> tuple[int, dict[str, list[str]]]:
            return await self._client.catalog_services(index=index, wait=self.settings.wait)

        def apply(services: dict[str, list[str]]) -> None:
            new = {n: tuple(sorted(t)) for n, t in services.items() if self.matches(n)}
            old = self._catalog
            self._catalog = new
            if old is None:
                self._mark(new)
            else:
                self._mark(n for n in new.keys() | old.keys() if new.get(n) != old.get(n))
            self._wake.set()

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what="catalog services",
        )

    async def _watch_checks(self, controller: str) -> None:
        async def fetch(index: int) -> tuple[int, list[CheckState]]:
            return await self._client.health_state(
                "any", filter=self.server_filter, index=index, wait=self.settings.wait
            )

        def apply(checks: list[CheckState]) -> None:
            per_service: dict[str, set[tuple[str, str, str, str]]] = {}
            per_node: dict[str, set[tuple[str, str]]] = {}
            for c in checks:
                if not c.service_id:
                    per_node.setdefault(c.node, set()).add((c.check_id, c.status))
                elif self.matches(c.service_name):
                    per_service.setdefault(c.service_name, set()).add(
                        (c.node, c.service_id, c.check_id, c.status)
                    )
            sigs = {n: frozenset(v) for n, v in per_service.items()}
            nodes = {n: frozenset(v) for n, v in per_node.items()}
            old, old_nodes = self._check_sigs, self._node_sigs
            self._check_sigs, self._node_sigs = sigs, nodes
            if old is None:
                self._mark(sigs)
            else:
                self._mark(n for n in sigs.keys() | old.keys() if sigs.get(n) != old.get(n))
                # A node-level check (serfHealth...) changes the health of every instance on it.
                moved = {
                    n for n in nodes.keys() | old_nodes.keys() if nodes.get(n) != old_nodes.get(n)
                }
                if moved:
                    self._mark(
                        name
                        for name, instances in self._by_service.items()
                        if any(i.node in moved for i in instances.values())
                    )
            self._wake.set()

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what="health state any",
        )

    async def _relist_loop(self) -> None:
        assert self.relist_every is not None
        while True:
            await self.settings.clock.sleep(self.relist_every)
            self._mark(self._catalog or ())

    async def _refresh_loop(self, emit: Emit, controller: str) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._catalog is None or self._check_sigs is None:
                continue  # not both long polls yet: the first refresh reads everything once
            dirty, self._dirty = self._dirty, set()
            changes, failed = await self._refresh(sorted(dirty), controller)
            if not self._dirty and not failed:
                self._set_ready(controller)
            self._emit(emit, controller, changes)
            if failed:
                await self.settings.clock.sleep(self.settings.backoff_base)
                self._mark(failed)

    async def _refresh(self, names: list[str], controller: str) -> tuple[list[Change], list[str]]:
        catalog = self._catalog or {}
        changes: list[Change] = []
        fetched: dict[str, dict[str, ServiceInstance]] = {}
        failed: list[str] = []

        async def read(name: str) -> None:
            assert self._limiter is not None
            async with self._limiter:
                try:
                    _, instances = await self._client.health_service(
                        name, passing=self.passing_only
                    )
                except Exception as exc:
                    metrics.WATCH_ERRORS.labels(controller=controller, source=self.name).inc()
                    log.warning(
                        "%s: reading health of %s failed: %s; retrying",
                        controller,
                        name,
                        exc,
                        extra={"controller": controller, "source": self.name},
                    )
                    failed.append(name)
                    return
                self.reads += 1
                fetched[name] = self._keep(instances)

        async with anyio.create_task_group() as tg:
            for name in names:
                if name in catalog:
                    tg.start_soon(read, name)
                else:
                    fetched[name] = {}
        for name in sorted(fetched):
            current = self._by_service.setdefault(name, {})
            for change in replace_items(current, fetched[name]):
                if change.deleted:
                    self._items.pop(change.id, None)
                else:
                    self._items[change.id] = change.item
                changes.append(change)
            if not current:
                del self._by_service[name]
        return changes, failed

    def instances_of(self, service: str) -> Mapping[str, ServiceInstance]:
        """The cached instances of one service (pattern mode), by instance id."""
        return dict(self._by_service.get(service, {}))
