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
  ``filter``), with its node, service and status. A status change needs nothing else: the
  instance is rebuilt from the checks alone, with no further request.
* ``/v1/catalog/services``: names and tags, for services that appear, disappear or carry no
  check.

The registration itself (address, port, tags, meta) is read with short, non-blocking requests:
once per node at start (``/v1/catalog/node/:node``: a read per node, not per service), then one
``/v1/health/service/:name`` per service that appeared or whose tags or instances changed, or,
when such services are at least twice as many as the nodes, one ``/v1/catalog/node/:node``
filtered to them per node (a name no node read finds is read alone), at most
``read_concurrency`` requests at a time, so writes and session renewals sharing the client's
short-request pool never wait behind them for long. A re-registration that changes an
instance's address without touching its checks, tags or id is invisible to both long polls;
``relist_every`` (10 min by default) re-reads every node to bound how long such a change can go
unseen.

Check ``Output`` is ignored when comparing, so a chatty HTTP check does not wake the controller
while its status stays the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import anyio

from reconciler import metrics
from reconciler.clients.consul import (
    CheckKey,
    CheckState,
    HealthCheck,
    ServiceInstance,
    check_key,
)
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.sources._watch import (
    DEFAULT_WAIT,
    PollSettings,
    WatchBase,
    index_resets,
    poll_forever,
    replace_items,
)
from reconciler.sources.base import Change, Emit

log = logging.getLogger(__name__)

# How many service names' pattern matches are remembered (cleared when full).
MATCH_MEMO = 200_000
# From this many services to read at once, they are read per node: one filtered
# ``/v1/catalog/node/:node`` request for up to NODE_BATCH of them, instead of one request each.
NODE_BATCH_MIN = 4
NODE_BATCH = 48


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
        known: Mapping[CheckKey, CheckState] | None = None,
    ) -> tuple[int, list[CheckState]]: ...

    async def catalog_services(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[int, dict[str, list[str]]]: ...

    async def catalog_nodes(self) -> list[tuple[str, str]]: ...

    async def catalog_node(
        self, node: str, *, filter: str | None = None
    ) -> tuple[str, list[Mapping[str, Any]]]: ...


class _ReadFailed(Exception):
    """Some short reads failed: ``names`` to read again, ``touched`` read fine meanwhile."""

    def __init__(self, names: Iterable[str], touched: set[str], *, relist: bool = False) -> None:
        super().__init__("read failed")
        self.names = list(names)
        self.touched = touched
        self.relist = relist


def _by_id(check: HealthCheck) -> str:
    return check.check_id


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
        # Pattern mode: what the two long polls last said, for matching services.
        self._catalog: dict[str, tuple[str, ...]] | None = None
        self._checks: dict[tuple[str, str], tuple[HealthCheck, ...]] | None = None
        self._check_names: dict[tuple[str, str], str] = {}
        self._states: dict[CheckKey, CheckState] = {}
        self._node_checks: dict[str, tuple[HealthCheck, ...]] = {}
        self._by_service: dict[str, dict[str, ServiceInstance]] = {}
        self._dirty: set[str] = set()  # names whose registrations must be read again
        self._restatus: set[str] = set()  # names whose checks changed (no read needed)
        self._relist = True  # read every node (start, and every relist_every)
        self._wake = anyio.Event()
        self._limiter: anyio.CapacityLimiter | None = None
        # Every matching instance known, by service (the cache holds those ``passing_only``
        # keeps), so one turning passing is published from the checks alone.
        self._known: dict[str, dict[str, ServiceInstance]] = {}
        self._matched: dict[str, bool] = {}
        self._listed_nodes: set[str] = set()  # the nodes of the last full read
        self.reads = 0

    def matches(self, service: str) -> bool:
        if self.service is not None:
            return service == self.service
        # Every answer of both long polls names every service again: match each name once.
        known = self._matched.get(service)
        if known is None:
            assert self.pattern is not None
            known = self.pattern.fullmatch(service) is not None
            if len(self._matched) >= MATCH_MEMO:
                self._matched.clear()
            self._matched[service] = known
        return known

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
            resets_of=index_resets(self._client),
        )

    # -- a pattern: two long polls, then short reads of what changed -------------------------
    def _mark(self, names: Iterable[str], *, read: bool = True) -> None:
        target = self._dirty if read else self._restatus
        before = len(target)
        target.update(names)
        if len(target) != before:
            self._wake.set()

    async def _watch_catalog(self, controller: str) -> None:
        async def fetch(index: int) -> tuple[int, dict[str, list[str]]]:
            return await self._client.catalog_services(index=index, wait=self.settings.wait)

        def apply(services: dict[str, list[str]]) -> None:
            new = {n: tuple(sorted(t)) for n, t in services.items() if self.matches(n)}
            old = self._catalog
            self._catalog = new
            if old is not None:
                self._mark(n for n in new.keys() | old.keys() if new.get(n) != old.get(n))
            self._wake.set()

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what="catalog services",
            resets_of=index_resets(self._client),
        )

    async def _watch_checks(self, controller: str) -> None:
        async def fetch(index: int) -> tuple[int, list[CheckState]]:
            return await self._client.health_state(
                "any",
                filter=self.server_filter,
                index=index,
                wait=self.settings.wait,
                known=self._states,
            )

        def apply(states: list[CheckState]) -> None:
            grouped: dict[tuple[str, str], list[HealthCheck]] = {}
            names: dict[tuple[str, str], str] = {}
            per_node: dict[str, list[HealthCheck]] = {}
            # The checks kept, so the next answer reuses every unchanged one as it decodes.
            kept: dict[CheckKey, CheckState] = {}
            for state in states:
                if not state.service_id:
                    per_node.setdefault(state.node, []).append(state.check)
                elif self.matches(state.service_name):
                    instance = (state.node, state.service_id)
                    grouped.setdefault(instance, []).append(state.check)
                    names[instance] = state.service_name
                else:
                    continue
                kept[check_key(state)] = state
            self._states = kept
            checks = {k: tuple(sorted(v, key=_by_id)) for k, v in grouped.items()}
            nodes = {k: tuple(sorted(v, key=_by_id)) for k, v in per_node.items()}
            old, old_nodes, old_names = self._checks, self._node_checks, self._check_names
            self._checks, self._node_checks, self._check_names = checks, nodes, names
            if old is not None:
                appeared = {names[i] for i in checks.keys() - old.keys()}
                vanished = {old_names[i] for i in old.keys() - checks.keys()}
                # A new or vanished instance needs its registration read; a status change
                # only needs the instance rebuilt from the checks we already have.
                self._mark(appeared | vanished)
                self._mark(
                    (names[i] for i in checks.keys() & old.keys() if checks[i] != old[i]),
                    read=False,
                )
                moved = {
                    n for n in nodes.keys() | old_nodes.keys() if nodes.get(n) != old_nodes.get(n)
                }
                if moved:
                    self._mark(
                        (
                            name
                            for name, instances in self._known.items()
                            if any(i.node in moved for i in instances.values())
                        ),
                        read=False,
                    )
            self._wake.set()

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what="health state any",
            resets_of=index_resets(self._client),
        )

    async def _relist_loop(self) -> None:
        assert self.relist_every is not None
        while True:
            await self.settings.clock.sleep(self.relist_every)
            self._relist = True
            self._wake.set()

    def _checks_of(self, node: str, service_id: str) -> list[HealthCheck]:
        assert self._checks is not None
        return [*self._node_checks.get(node, ()), *self._checks.get((node, service_id), ())]

    async def _refresh_loop(self, emit: Emit, controller: str) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._catalog is None or self._checks is None:
                continue  # both long polls first: the first refresh reads every node once
            try:
                if self._relist:
                    self._relist = False
                    self._dirty.clear()
                    self._restatus.clear()
                    touched = await self._read_nodes(controller)
                else:
                    dirty, self._dirty = self._dirty, set()
                    restatus, self._restatus = self._restatus - dirty, set()
                    touched = await self._read_services(sorted(dirty), controller)
                    touched |= self._rebuild(restatus)
            except _ReadFailed as failed:
                # Keep what we have; read again after a pause (the failure is counted).
                self._dirty.update(failed.names)
                self._relist = self._relist or failed.relist
                changes = self._publish(failed.touched)
                self._emit(emit, controller, changes)
                await self.settings.clock.sleep(self.settings.backoff_base)
                self._wake.set()
                continue
            changes = self._publish(touched)
            if not self._dirty and not self._relist:
                self._set_ready(controller)
            self._emit(emit, controller, changes)

    def _publish(self, names: Iterable[str]) -> list[Change]:
        """Make the cache of every service in ``names`` what is known of it (absent: gone)."""
        changes: list[Change] = []
        catalog = self._catalog or {}
        for name in sorted(set(names)):
            if name not in catalog:
                self._known.pop(name, None)
            wanted = self._keep(self._known.get(name, {}).values())
            current = self._by_service.setdefault(name, {})
            for change in replace_items(current, wanted):
                if change.deleted:
                    self._items.pop(change.id, None)
                else:
                    self._items[change.id] = change.item
                changes.append(change)
            if not current:
                del self._by_service[name]
        return changes

    def _rebuild(self, names: Iterable[str]) -> set[str]:
        """Re-derive the status of the instances of ``names`` from the checks alone."""
        touched: set[str] = set()
        for name in names:
            instances = self._known.get(name)
            if instances:
                self._known[name] = {
                    key: i.with_checks(self._checks_of(i.node, i.service_id))
                    for key, i in instances.items()
                }
                touched.add(name)
        return touched

    async def _read_nodes(self, controller: str) -> set[str]:
        """Every matching instance, from one catalog read per node; returns the names touched."""
        try:
            nodes = await self._client.catalog_nodes()
        except Exception as exc:
            self._read_failed(controller, "catalog nodes", exc)
            raise _ReadFailed((), set(), relist=True) from exc
        self._listed_nodes = {node for node, _ in nodes}
        found: dict[str, dict[str, ServiceInstance]] = {}
        failed: list[str] = []

        async def read(node: str) -> None:
            assert self._limiter is not None
            async with self._limiter:
                try:
                    address, services = await self._client.catalog_node(node)
                except Exception as exc:
                    self._read_failed(controller, f"catalog node {node}", exc)
                    failed.append(node)
                    return
            self.reads += 1
            for name, instance in self._instances(node, address, services, self.matches):
                found.setdefault(name, {})[instance_id(instance)] = instance

        async with anyio.create_task_group() as tg:
            for node, _ in nodes:
                tg.start_soon(read, node)
        if failed:
            raise _ReadFailed((), set(), relist=True)
        touched = set(self._known) | set(found)
        self._known = found
        return touched

    async def _read_services(self, names: list[str], controller: str) -> set[str]:
        catalog = self._catalog or {}
        touched: set[str] = set()
        failed: list[str] = []
        present = [name for name in names if name in catalog]
        touched.update(name for name in names if name not in catalog)  # gone: published deleted
        nodes, batched, alone = self._split(present)

        async def read(name: str) -> None:
            assert self._limiter is not None
            async with self._limiter:
                try:
                    _, instances = await self._client.health_service(name)
                except Exception as exc:
                    self._read_failed(controller, f"health of {name}", exc)
                    failed.append(name)
                    return
            self.reads += 1
            self._known[name] = {instance_id(i): i for i in instances}
            touched.add(name)

        async def read_node(node: str, batch: list[str]) -> None:
            assert self._limiter is not None
            wanted = " or ".join(f'Service == "{name}"' for name in batch)
            async with self._limiter:
                try:
                    address, services = await self._client.catalog_node(node, filter=wanted)
                except Exception as exc:
                    self._read_failed(controller, f"catalog node {node}", exc)
                    failed.extend(batch)
                    return
            self.reads += 1
            # Each name was emptied before the reads: each node's read adds its instances.
            for name, instance in self._instances(node, address, services, set(batch).__contains__):
                self._known[name][instance_id(instance)] = instance
            touched.update(batch)

        for name in batched:
            self._known[name] = {}
        async with anyio.create_task_group() as tg:
            for name in alone:
                tg.start_soon(read, name)
            for node in nodes:
                for start in range(0, len(batched), NODE_BATCH):
                    tg.start_soon(read_node, node, batched[start : start + NODE_BATCH])
        # A name no node read found lives on a node not known yet: read it alone.
        unseen = [n for n in batched if not self._known.get(n) and n not in failed]
        if unseen:
            async with anyio.create_task_group() as tg:
                for name in unseen:
                    tg.start_soon(read, name)
        if failed:
            # A name read through several nodes is whole only when every one of them answered.
            raise _ReadFailed(failed, touched - set(failed))
        return touched

    def _instances(
        self,
        node: str,
        address: str,
        services: Iterable[Mapping[str, Any]],
        wanted: Callable[[str], bool],
    ) -> Iterator[tuple[str, ServiceInstance]]:
        """The instances of ``node``'s catalog entries whose service name is ``wanted``."""
        for svc in services:
            name = str(svc.get("Service") or "")
            if wanted(name):
                checks = self._checks_of(node, str(svc.get("ID") or ""))
                yield name, ServiceInstance.build(node, address, svc, checks)

    def _split(self, names: list[str]) -> tuple[list[str], list[str], list[str]]:
        """The nodes to read ``names`` from in batches (every node known: from the last node
        list and the checks, as every agent's node carries ``serfHealth``), the names read so,
        and the names to read one by one: all of them when they are fewer than twice the nodes,
        and any a filter expression could not quote."""
        nodes = set(self._listed_nodes) | set(self._node_checks)
        nodes.update(node for node, _ in self._check_names)
        if len(names) < NODE_BATCH_MIN or 2 * len(nodes) > len(names):
            return [], [], names
        quotable = [n for n in names if '"' not in n and "\\" not in n]
        alone = [n for n in names if '"' in n or "\\" in n]
        return sorted(nodes), quotable, alone

    def _read_failed(self, controller: str, what: str, exc: Exception) -> None:
        metrics.WATCH_ERRORS.labels(controller=controller, source=self.name).inc()
        log.warning(
            "%s: reading %s failed: %s; retrying",
            controller,
            what,
            exc,
            extra={"controller": controller, "source": self.name},
        )

    def instances_of(self, service: str) -> Mapping[str, ServiceInstance]:
        """The cached instances of one service (pattern mode), by instance id."""
        return dict(self._by_service.get(service, {}))
