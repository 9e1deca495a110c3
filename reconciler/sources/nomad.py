"""Watch Nomad jobs, allocations or nodes: the event stream first, blocking queries otherwise.

The jobs and allocations controllers react to Nomad changes (a job registered, an allocation
placed or failed). Nomad's ``/v1/event/stream`` pushes those with no polling at all, but it can
be disabled, forbidden by ACLs, or cut; ``/v1/jobs`` and ``/v1/allocations`` blocking queries
always work. So the source lists once (ready), follows the stream from the list's index, and:

* if the stream is refused (404, 403, 400) it polls with blocking queries for good;
* if the stream breaks (connection, 5xx, silence past the heartbeat) it backs off, polls for a
  while (``stream_retry_after``) and then tries the stream again;
* every ``relist_every`` it reconnects and relists, because objects garbage-collected by Nomad
  produce no event and would otherwise stay in the cache.

Items are keyed by job, allocation or node id and compared by ``ModifyIndex``. Nodes are listed
with their resources, so a capacity calculation can run on the cache alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import anyio

from reconciler import metrics
from reconciler.clients.errors import BadRequest, ClientError, NotFound, PermissionDenied
from reconciler.clients.nomad import Allocation, Event, Job, JobStub, Node
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

Kind = Literal["jobs", "allocations", "nodes"]
NomadObject = JobStub | Allocation | Node
_TOPICS: dict[str, str] = {"jobs": "Job", "allocations": "Allocation", "nodes": "Node"}


class NomadReader(Protocol):
    """What :class:`NomadSource` needs of a Nomad client (``NomadClient`` provides it)."""

    async def list_jobs(
        self,
        *,
        prefix: str | None = None,
        meta: bool = False,
        index: int = 0,
        wait: float | None = None,
        namespace: str | None = None,
    ) -> tuple[int, list[JobStub]]: ...

    async def list_allocations(
        self,
        *,
        prefix: str | None = None,
        filter: str | None = None,
        resources: bool = False,
        index: int = 0,
        wait: float | None = None,
        namespace: str | None = None,
    ) -> tuple[int, list[Allocation]]: ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_nodes(
        self, *, resources: bool = False, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[Node]]: ...

    def events(
        self,
        topics: Mapping[str, Sequence[str]] | Sequence[str],
        *,
        index: int = 0,
        namespace: str | None = "*",
        on_heartbeat: Callable[[], None] | None = None,
    ) -> AsyncGenerator[Event, None]: ...


def _same_version(old: NomadObject, new: NomadObject) -> bool:
    return old.modify_index == new.modify_index


# What a ``/v1/jobs`` list entry holds beside the fields JobStub declares: a job from the
# event stream is the whole job (task groups, tasks, services...), which a cache of stubs must
# not keep: thousands of them are what a controller's memory would go to.
_JOB_LIST_KEYS = frozenset(
    {
        "ParentID",
        "Datacenters",
        "NodePool",
        "Multiregion",
        "Priority",
        "Periodic",
        "ParameterizedJob",
        "StatusDescription",
        "SubmitTime",
    }
)
_JOB_STUB_KEYS = frozenset(f.alias or n for n, f in JobStub.model_fields.items()) | _JOB_LIST_KEYS


def _stub_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a full job (an event's payload) that a ``/v1/jobs`` stub carries."""
    return {k: v for k, v in raw.items() if k in _JOB_STUB_KEYS}


def _without_job(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An allocation as ``/v1/allocations`` lists it: an event's allocation embeds its whole
    job, which the list never does and a cache of allocations must not keep."""
    return {k: v for k, v in raw.items() if k != "Job"}


# Answers meaning "this server will not give you a stream": stop asking.
_STREAM_REFUSED = (NotFound, PermissionDenied, BadRequest)


class NomadSource(WatchBase):
    """Jobs (``kind="jobs"``) or allocations (``kind="allocations"``) of Nomad.

    ``job_prefix`` limits the watch to jobs whose id starts with it (for allocations, to those
    of such jobs). ``resources=True`` lists allocations with ``AllocatedResources`` (ports) when
    polling; stream payloads always carry them.
    """

    def __init__(
        self,
        client: NomadReader,
        kind: Kind = "jobs",
        *,
        job_prefix: str | None = None,
        namespace: str | None = None,
        resources: bool = True,
        use_stream: bool = True,
        stream_retry_after: float = 60.0,
        relist_every: float = 600.0,
        name: str | None = None,
        wait: float = DEFAULT_WAIT,
        rate: float = 10.0,
        burst: int = 10,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if kind not in _TOPICS:
            raise ValueError(f"unknown Nomad watch kind {kind!r}")
        super().__init__(name or f"nomad:{kind}{':' + job_prefix if job_prefix else ''}")
        self.kind = kind
        self.job_prefix = job_prefix
        self.namespace = namespace
        self.resources = resources
        self.use_stream = use_stream
        self.stream_retry_after = stream_retry_after
        self.relist_every = relist_every
        self._client = client
        self.settings = PollSettings(
            wait=wait,
            rate=rate,
            burst=burst,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            clock=clock,
        )
        self.mode: Literal["stream", "poll"] = "stream" if use_stream else "poll"

    # -- cache

    def _wanted(self, obj: NomadObject) -> bool:
        if self.job_prefix is None or isinstance(obj, Node):
            return True
        job_id = obj.id if isinstance(obj, JobStub) else obj.job_id
        return job_id.startswith(self.job_prefix)

    def _replace(self, objects: Sequence[NomadObject]) -> list[Change]:
        new = {o.id: o for o in objects if self._wanted(o)}
        return replace_items(self._items, new, _same_version)

    def _upsert(self, obj: NomadObject) -> list[Change]:
        if not self._wanted(obj):
            return []
        old = self._items.get(obj.id)
        if old is not None and old.modify_index >= obj.modify_index:
            return []
        self._items[obj.id] = obj
        return [Change(obj.id, obj, old=old)]

    def _remove(self, obj_id: str) -> list[Change]:
        old = self._items.pop(obj_id, None)
        return [] if old is None else [Change(obj_id, old, deleted=True)]

    async def _list(self, index: int = 0, wait: float | None = None) -> tuple[int, list[Any]]:
        if self.kind == "nodes":
            got, nodes = await self._client.list_nodes(resources=True, index=index, wait=wait)
            return got, list(nodes)
        if self.kind == "jobs":
            # meta=true (Nomad >= 1.3): listed stubs carry Meta as stream events do, so a
            # controller can tell its own jobs from the cache without a read per job.
            got, jobs = await self._client.list_jobs(
                prefix=self.job_prefix, meta=True, index=index, wait=wait, namespace=self.namespace
            )
            return got, list(jobs)
        got, allocs = await self._client.list_allocations(
            resources=self.resources, index=index, wait=wait, namespace=self.namespace
        )
        return got, list(allocs)

    async def _apply_event(self, event: Event) -> list[Change]:
        if event.topic != _TOPICS[self.kind]:
            return []
        if self.kind == "jobs":
            raw = event.payload.get("Job")
            job_id = event.key or (raw or {}).get("ID", "")
            if not job_id:
                return []
            if event.type == "JobDeregistered":
                current = await self._client.get_job(job_id)
                if current is None:
                    return self._remove(job_id)
                return self._upsert(current)
            if raw is None:
                return []
            return self._upsert(JobStub.model_validate(_stub_fields(raw)))
        if self.kind == "nodes":
            raw = event.payload.get("Node")
            if raw is None:
                return []
            if event.type == "NodeDeregistration":
                return self._remove(str(raw.get("ID") or event.key))
            return self._upsert(Node.model_validate(raw))
        raw = event.payload.get("Allocation")
        if raw is None:
            return []
        return self._upsert(Allocation.model_validate(_without_job(raw)))

    # -- loop

    async def run(self, emit: Emit, *, controller: str) -> None:
        metrics.init_source(controller, self.name)
        labels = {"controller": controller, "source": self.name}
        extra = {"controller": controller, "source": self.name}
        backoff = self.settings.backoff()
        bucket = self.settings.bucket()
        clock = self.settings.clock
        while True:
            if self.mode == "poll":
                await self._poll(emit, controller)
                self.mode = "stream"
                continue
            await bucket.acquire()
            metrics.WATCH_REQUESTS.labels(**labels).inc()
            try:
                await self._stream_once(emit, controller)
                backoff.reset()
            except _STREAM_REFUSED as exc:
                metrics.WATCH_ERRORS.labels(**labels).inc()
                log.warning(
                    "%s: Nomad event stream refused (%s); polling with blocking queries",
                    controller,
                    exc,
                    extra=extra,
                )
                self.use_stream = False
                self.mode = "poll"
            except Exception as exc:
                metrics.WATCH_ERRORS.labels(**labels).inc()
                delay = backoff.next_delay()
                log.warning(
                    "%s: Nomad event stream failed (%s); polling for %.0fs after %.2fs",
                    controller,
                    exc,
                    self.stream_retry_after,
                    delay,
                    extra=extra,
                    exc_info=not isinstance(exc, ClientError),
                )
                await clock.sleep(delay)
                self.mode = "poll"

    async def _stream_once(self, emit: Emit, controller: str) -> None:
        """List, then follow the stream until it fails or ``relist_every`` passes."""
        last_success = metrics.WATCH_LAST_SUCCESS.labels(controller=controller, source=self.name)
        index, objects = await self._list()
        changed = self._replace(objects)
        last_success.set(time.time())
        self._set_ready(controller)
        self._emit(emit, controller, changed)
        topic = _TOPICS[self.kind]

        def beat() -> None:
            last_success.set(time.time())

        with anyio.move_on_after(self.relist_every):
            stream = self._client.events(
                [topic], index=index, namespace=self.namespace or "*", on_heartbeat=beat
            )
            async with contextlib.aclosing(stream):
                async for event in stream:
                    self._emit(emit, controller, await self._apply_event(event))

    async def _poll(self, emit: Emit, controller: str) -> None:
        """Blocking queries: forever if the stream was refused, else ``stream_retry_after``."""

        async def fetch(index: int) -> tuple[int, list[Any]]:
            return await self._list(index=index, wait=self.settings.wait)

        def apply(objects: list[Any]) -> None:
            changed = self._replace(objects)
            self._set_ready(controller)
            self._emit(emit, controller, changed)

        limit = None if not self.use_stream else self.stream_retry_after
        with anyio.move_on_after(limit):
            await poll_forever(
                source=self.name,
                controller=controller,
                fetch=fetch,
                apply=apply,
                settings=self.settings,
                what=f"nomad {self.kind}",
                resets_of=index_resets(self._client),
            )
