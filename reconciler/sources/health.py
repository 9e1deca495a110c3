"""Watch the health of Consul services: one by name, or every service whose name matches.

The allocations controller needs to know when a user's core or HMI instance becomes passing,
moves, or goes away. Consul's ``/v1/health/service/:name`` long poll gives exactly that for one
service; for a family of services (``core-.*``) the catalog (``/v1/catalog/services``) is
watched too, and one health watch per matching service is started in the source's own task
group when it appears and cancelled when it disappears.

Items map a service name to its instances (:class:`ServiceInstance`, with aggregated check
status); the id emitted is the service name. Check ``Output`` is ignored when comparing, so a
chatty HTTP check does not wake the controller while its status stays the same.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

import anyio
import anyio.abc

from reconciler import metrics
from reconciler.clients.consul import ServiceInstance
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.sources._watch import DEFAULT_WAIT, PollSettings, WatchBase, poll_forever
from reconciler.sources.base import Emit

log = logging.getLogger(__name__)


class HealthReader(Protocol):
    """What :class:`ServiceHealthSource` needs of a Consul client (``ConsulClient`` has it)."""

    async def health_service(
        self, name: str, *, passing: bool = False, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[ServiceInstance]]: ...

    async def catalog_services(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[int, dict[str, list[str]]]: ...


class ServiceHealthSource(WatchBase):
    """Health of one service (``service=``) or of every service matching ``pattern=``.

    ``pattern`` is a regular expression matched against the whole service name
    (``re.fullmatch``). ``passing_only`` keeps only instances whose checks all pass, as
    ``?passing`` does. In pattern mode the source is ready once the catalog and the first read of
    every service matching at that time have succeeded.
    """

    def __init__(
        self,
        client: HealthReader,
        *,
        service: str | None = None,
        pattern: str | re.Pattern[str] | None = None,
        passing_only: bool = False,
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
        self.service = service
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.passing_only = passing_only
        default = f"health:{service}" if service else f"health:/{self.pattern.pattern}/"  # type: ignore[union-attr]
        super().__init__(name or default)
        self._client = client
        self.settings = PollSettings(
            wait=wait,
            rate=rate,
            burst=burst,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            clock=clock,
        )
        self._watches: dict[str, anyio.CancelScope] = {}
        self._pending_first: set[str] = set()
        self._catalog_read = False

    def matches(self, service: str) -> bool:
        if self.service is not None:
            return service == self.service
        assert self.pattern is not None
        return self.pattern.fullmatch(service) is not None

    @property
    def watched(self) -> frozenset[str]:
        """The services with a running health watch (pattern mode)."""
        return frozenset(self._watches)

    async def run(self, emit: Emit, *, controller: str) -> None:
        metrics.init_source(controller, self.name)
        if self.service is not None:
            await self._watch_service(self.service, emit, controller)
            return
        async with anyio.create_task_group() as tg:
            try:
                await self._watch_catalog(tg, emit, controller)
            finally:
                for scope in self._watches.values():
                    scope.cancel()

    async def _watch_service(
        self,
        service: str,
        emit: Emit,
        controller: str,
        scope: anyio.CancelScope | None = None,
    ) -> None:
        async def fetch(index: int) -> tuple[int, tuple[ServiceInstance, ...]]:
            got, instances = await self._client.health_service(
                service, passing=self.passing_only, index=index, wait=self.settings.wait
            )
            return got, tuple(instances)

        def apply(instances: tuple[ServiceInstance, ...]) -> None:
            if scope is not None and self._watches.get(service) is not scope:
                return  # this watch was stopped: the service left the catalog
            old = self._items.get(service)
            self._items[service] = instances
            self._pending_first.discard(service)
            self._check_ready(controller)
            if old != instances:
                self._emit(emit, controller, [service])

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what=f"health {service}",
        )

    def _check_ready(self, controller: str) -> None:
        if self.service is not None or (self._catalog_read and not self._pending_first):
            self._set_ready(controller)

    async def _watch_catalog(self, tg: anyio.abc.TaskGroup, emit: Emit, controller: str) -> None:
        async def fetch(index: int) -> tuple[int, dict[str, list[str]]]:
            return await self._client.catalog_services(index=index, wait=self.settings.wait)

        def apply(services: dict[str, list[str]]) -> None:
            wanted = {s for s in services if self.matches(s)}
            for gone in sorted(set(self._watches) - wanted):
                self._watches.pop(gone).cancel()
                self._pending_first.discard(gone)
                if self._items.pop(gone, None) is not None:
                    self._emit(emit, controller, [gone])
                log.info(
                    "%s: service %s left the catalog; its health watch stopped",
                    controller,
                    gone,
                    extra={"controller": controller, "source": self.name},
                )
            for new in sorted(wanted - set(self._watches)):
                scope = anyio.CancelScope()
                self._watches[new] = scope
                self._pending_first.add(new)
                tg.start_soon(self._scoped_watch, scope, new, emit, controller, name=new)
            self._catalog_read = True
            self._check_ready(controller)

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=fetch,
            apply=apply,
            settings=self.settings,
            what="catalog services",
        )

    async def _scoped_watch(
        self, scope: anyio.CancelScope, service: str, emit: Emit, controller: str
    ) -> None:
        with scope:
            await self._watch_service(service, emit, controller, scope)
