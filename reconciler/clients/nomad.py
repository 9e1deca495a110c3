"""The Nomad client: the handful of endpoints the controllers need, typed, over one httpx pool.

Nomad's HTTP API is simple enough that a thin client is clearer than a third-party SDK: jobs,
allocations, evaluations, nodes, blocking queries and the ndjson event stream. What needs care is
here once:

* errors are plain text, and spec validation and ``EnforceIndex`` failures come back as HTTP 500:
  they are told apart from real server failures by their text, so a controller sees
  :class:`BadRequest` / :class:`Conflict`, not a retryable :class:`Unavailable`;
* blocking queries get a read timeout of ``wait + wait/16 + margin`` and return
  ``(X-Nomad-Index, data)``;
* the event stream sends a ``{}`` heartbeat every 30 s, so its read timeout is longer than that
  and a silent connection is detected as dead;
* models keep only the fields the framework reads as typed attributes and allow the rest
  (``extra="allow"``): Nomad adds fields in every release.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.clients._common import blocking_read_timeout, format_wait, retry_read
from reconciler.clients.config import NomadConfig
from reconciler.clients.errors import (
    BadRequest,
    ClientError,
    Conflict,
    NotFound,
    Timeout,
    Unavailable,
    error_for_status,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

TERMINAL_CLIENT_STATUSES = frozenset({"complete", "failed", "lost"})


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Resources:
    """CPU (MHz shares), memory and disk (MB): what the scheduler bin-packs."""

    cpu: int = 0
    memory_mb: int = 0
    disk_mb: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu + other.cpu, self.memory_mb + other.memory_mb, self.disk_mb + other.disk_mb
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu - other.cpu, self.memory_mb - other.memory_mb, self.disk_mb - other.disk_mb
        )

    def times(self, other: Resources) -> int:
        """How many ``other`` fit in ``self`` (0 when any dimension is short)."""
        counts = [
            have // need
            for have, need in (
                (self.cpu, other.cpu),
                (self.memory_mb, other.memory_mb),
                (self.disk_mb, other.disk_mb),
            )
            if need > 0
        ]
        if not counts:
            raise ValueError("cannot count how many empty resource sets fit")
        return max(0, min(counts))


def _amount(raw: Any, *path: str) -> int:
    for part in path:
        if not isinstance(raw, dict):
            return 0
        raw = raw.get(part)
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


class _NomadModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class JobStub(_NomadModel):
    """An entry of ``/v1/jobs`` (and the common part of a full job)."""

    id: str = Field(alias="ID")
    name: str = Field(default="", alias="Name")
    namespace: str = Field(default="default", alias="Namespace")
    type: str = Field(default="service", alias="Type")
    status: str = Field(default="", alias="Status")
    stop: bool = Field(default=False, alias="Stop")
    meta: dict[str, str] | None = Field(default=None, alias="Meta")
    create_index: int = Field(default=0, alias="CreateIndex")
    modify_index: int = Field(default=0, alias="ModifyIndex")
    job_modify_index: int = Field(default=0, alias="JobModifyIndex")


class Job(JobStub):
    """A full job from ``/v1/job/:id``; ``task_groups`` stays raw JSON."""

    version: int = Field(default=0, alias="Version")
    task_groups: list[dict[str, Any]] = Field(default_factory=list, alias="TaskGroups")


class JobWriteResponse(_NomadModel):
    """The answer to a register or deregister."""

    eval_id: str = Field(default="", alias="EvalID")
    eval_create_index: int = Field(default=0, alias="EvalCreateIndex")
    job_modify_index: int = Field(default=0, alias="JobModifyIndex")
    warnings: str | None = Field(default=None, alias="Warnings")
    index: int = Field(default=0, alias="Index")


class JobSummary(_NomadModel):
    job_id: str = Field(alias="JobID")
    namespace: str = Field(default="default", alias="Namespace")
    summary: dict[str, dict[str, int]] = Field(default_factory=dict, alias="Summary")


class Port(_NomadModel):
    label: str = Field(alias="Label")
    value: int = Field(default=0, alias="Value")
    to: int = Field(default=0, alias="To")
    host_ip: str = Field(default="", alias="HostIP")


class NetworkResource(_NomadModel):
    mode: str = Field(default="host", alias="Mode")
    ip: str = Field(default="", alias="IP")
    reserved_ports: list[Port] | None = Field(default=None, alias="ReservedPorts")
    dynamic_ports: list[Port] | None = Field(default=None, alias="DynamicPorts")


class SharedResources(_NomadModel):
    disk_mb: int = Field(default=0, alias="DiskMB")
    networks: list[NetworkResource] | None = Field(default=None, alias="Networks")
    ports: list[Port] | None = Field(default=None, alias="Ports")


class AllocatedResources(_NomadModel):
    shared: SharedResources = Field(default_factory=SharedResources, alias="Shared")
    tasks: dict[str, Any] | None = Field(default=None, alias="Tasks")


class Allocation(_NomadModel):
    """An allocation (stub or full). ``allocated_resources`` is present on a full read or when
    listed with ``resources=True``."""

    id: str = Field(alias="ID")
    eval_id: str = Field(default="", alias="EvalID")
    name: str = Field(default="", alias="Name")
    namespace: str = Field(default="default", alias="Namespace")
    node_id: str = Field(default="", alias="NodeID")
    node_name: str = Field(default="", alias="NodeName")
    job_id: str = Field(default="", alias="JobID")
    task_group: str = Field(default="", alias="TaskGroup")
    desired_status: str = Field(default="", alias="DesiredStatus")
    desired_description: str = Field(default="", alias="DesiredDescription")
    client_status: str = Field(default="", alias="ClientStatus")
    client_description: str = Field(default="", alias="ClientDescription")
    task_states: dict[str, Any] | None = Field(default=None, alias="TaskStates")
    allocated_resources: AllocatedResources | None = Field(default=None, alias="AllocatedResources")
    create_index: int = Field(default=0, alias="CreateIndex")
    modify_index: int = Field(default=0, alias="ModifyIndex")

    @property
    def resources(self) -> Resources:
        """CPU and memory of every task plus the group's shared disk (zero when not listed)."""
        res = self.allocated_resources
        if res is None:
            return Resources()
        cpu = memory = 0
        for task in (res.tasks or {}).values():
            cpu += _amount(task, "Cpu", "CpuShares")
            memory += _amount(task, "Memory", "MemoryMB")
        return Resources(cpu, memory, res.shared.disk_mb)

    @property
    def terminal(self) -> bool:
        """The client has finished with it (``complete``, ``failed`` or ``lost``)."""
        return self.client_status in TERMINAL_CLIENT_STATUSES

    def address(self, label: str) -> tuple[str, int] | None:
        """Host IP and port of a port label, as Nomad's own service registration finds them:
        ``Shared.Ports`` first, then the first network's reserved/dynamic ports."""
        res = self.allocated_resources
        if res is None:
            return None
        for port in res.shared.ports or ():
            if port.label == label:
                return port.host_ip, port.value
        for net in res.shared.networks or ():
            for port in [*(net.dynamic_ports or ()), *(net.reserved_ports or ())]:
                if port.label == label:
                    return net.ip, port.value
            break
        return None


class Evaluation(_NomadModel):
    id: str = Field(alias="ID")
    type: str = Field(default="", alias="Type")
    status: str = Field(default="", alias="Status")
    status_description: str = Field(default="", alias="StatusDescription")
    triggered_by: str = Field(default="", alias="TriggeredBy")
    job_id: str = Field(default="", alias="JobID")
    blocked_eval: str = Field(default="", alias="BlockedEval")
    failed_tg_allocs: dict[str, Any] | None = Field(default=None, alias="FailedTGAllocs")
    queued_allocations: dict[str, int] | None = Field(default=None, alias="QueuedAllocations")
    create_index: int = Field(default=0, alias="CreateIndex")
    modify_index: int = Field(default=0, alias="ModifyIndex")


class Node(_NomadModel):
    """A node stub from ``/v1/nodes`` or a full node from ``/v1/node/:id``."""

    id: str = Field(alias="ID")
    name: str = Field(default="", alias="Name")
    datacenter: str = Field(default="", alias="Datacenter")
    node_pool: str = Field(default="default", alias="NodePool")
    address: str = Field(default="", alias="Address")
    status: str = Field(default="", alias="Status")
    scheduling_eligibility: str = Field(default="", alias="SchedulingEligibility")
    drain: bool = Field(default=False, alias="Drain")
    drain_strategy: dict[str, Any] | None = Field(default=None, alias="DrainStrategy")
    node_resources: dict[str, Any] | None = Field(default=None, alias="NodeResources")
    reserved_resources: dict[str, Any] | None = Field(default=None, alias="ReservedResources")
    create_index: int = Field(default=0, alias="CreateIndex")
    modify_index: int = Field(default=0, alias="ModifyIndex")

    @property
    def allocatable(self) -> Resources | None:
        """The node's resources minus what it reserves; None when not listed with resources."""
        total, reserved = self.node_resources, self.reserved_resources
        if total is None:
            return None
        have = Resources(
            _amount(total, "Cpu", "CpuShares"),
            _amount(total, "Memory", "MemoryMB"),
            _amount(total, "Disk", "DiskMB"),
        )
        held = Resources(
            _amount(reserved, "Cpu", "CpuShares"),
            _amount(reserved, "Memory", "MemoryMB"),
            _amount(reserved, "Disk", "DiskMB"),
        )
        return have - held

    @property
    def draining(self) -> bool:
        return self.drain or self.drain_strategy is not None

    @property
    def schedulable(self) -> bool:
        return (
            self.status == "ready"
            and self.scheduling_eligibility == "eligible"
            and not self.draining
        )


class Event(_NomadModel):
    """One event of ``/v1/event/stream``; ``payload`` holds ``Job``/``Allocation``/..."""

    topic: str = Field(alias="Topic")
    type: str = Field(default="", alias="Type")
    key: str = Field(default="", alias="Key")
    namespace: str = Field(default="", alias="Namespace")
    filter_keys: list[str] | None = Field(default=None, alias="FilterKeys")
    index: int = Field(default=0, alias="Index")
    payload: dict[str, Any] = Field(default_factory=dict, alias="Payload")


# --------------------------------------------------------------------------- errors

# Texts of Nomad's HTTP 500 answers that are the caller's fault, not the server's.
_VALIDATION_MARKERS = (
    "validation failed",
    "error occurred:",
    "errors occurred:",
    "Failed to parse",
    "Invalid job type",
    "Job ID contains",
    "Missing job",
    "Missing task",
    "Missing tasks",
    "Task group count can't be negative",
    "redefines",
    "does not exist",
    "minimum CPU value",
    "must have http path",
    "cannot be lower than",
    "Invalid ",
)


def translate_status(status: int, body: str, *, what: str) -> ClientError:
    """The error of our tree for a Nomad HTTP error status and plain-text body."""
    text = body.strip()
    msg = f"{what}: HTTP {status}: {text}" if text else f"{what}: HTTP {status}"
    if text.startswith("Enforcing job modify index"):
        return Conflict(msg, status=status, body=body)
    if status == 500 and any(marker in text for marker in _VALIDATION_MARKERS):
        return BadRequest(msg, status=status, body=body)
    return error_for_status(status, msg, body)


def _transport_error(what: str, exc: httpx.HTTPError) -> ClientError:
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"{what}: timed out ({type(exc).__name__})")
    return Unavailable(f"{what}: {type(exc).__name__}: {exc}")


def _parse(model: type[M], raw: Any, what: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise Unavailable(f"{what}: unexpected response shape: {exc}") from exc


def _parse_list(model: type[M], raw: Any, what: str) -> list[M]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise Unavailable(f"{what}: expected a JSON array, got {type(raw).__name__}")
    return [_parse(model, item, what) for item in raw]


def _topic_params(topics: Mapping[str, Sequence[str]] | Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(topics, Mapping):
        out: list[tuple[str, str]] = []
        for topic, keys in topics.items():
            out.extend(("topic", f"{topic}:{key}") for key in (keys or ["*"]))
        return out
    return [("topic", t if ":" in t else f"{t}:*") for t in topics]


# --------------------------------------------------------------------------- client

Params = list[tuple[str, str]]


class NomadClient:
    """The async Nomad API the framework uses. Every method may raise our error tree only.

    Lists and reads that accept ``index``/``wait`` are blocking queries when ``index`` > 0 and
    return ``(index, data)``; they are not retried (the caller's loop owns that), while
    non-blocking reads are retried a few times on :class:`Unavailable`. Writes are never retried.
    """

    def __init__(
        self,
        config: NomadConfig | None = None,
        *,
        timeout: float = 10.0,
        blocking_margin: float = 5.0,
        stream_read_timeout: float = 45.0,
        read_attempts: int = 3,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config or NomadConfig.from_env()
        self._timeout = timeout
        self._margin = blocking_margin
        self._stream_read_timeout = stream_read_timeout
        self._read_attempts = read_attempts
        headers = {"X-Nomad-Token": self.config.token} if self.config.token else {}
        if not self.config.compress:
            headers["Accept-Encoding"] = "identity"
        self._extensions: dict[str, Any] = {}
        if self.config.tls.server_name:
            self._extensions["sni_hostname"] = self.config.tls.server_name
        https = self.config.address.startswith("https://")
        self._http = http or httpx.AsyncClient(
            base_url=self.config.address,
            headers=headers,
            verify=self.config.tls.ssl_context() if https else True,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            trust_env=False,
        )
        if http is not None and self.config.token:
            self._http.headers["X-Nomad-Token"] = self.config.token
        self._guard: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"NomadClient({self.config.address})"

    def guarded(self, guard: Callable[[], None]) -> NomadClient:
        """This client (same connections) with ``guard()`` called before every write.

        The framework hands a leader-elected controller a guarded client whose guard raises
        :class:`~reconciler.clients.errors.FencingError` once the replica no longer leads, so a
        registration or purge is never sent by a replica that knows it was deposed.
        """
        view = copy.copy(self)
        view._guard = guard
        return view

    async def __aenter__(self) -> NomadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing

    def _params(self, params: Params | None = None, *, namespace: str | None = None) -> Params:
        out = list(params or ())
        ns = namespace or self.config.namespace
        if ns:
            out.append(("namespace", ns))
        if self.config.region:
            out.append(("region", self.config.region))
        return out

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Params,
        body: Any = None,
        read_timeout: float | None = None,
    ) -> tuple[int | None, Any]:
        what = f"{method} {path}"
        timeout = httpx.Timeout(self._timeout, read=read_timeout or self._timeout)
        try:
            resp = await self._http.request(
                method,
                path,
                params=tuple(params),
                content=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=timeout,
                extensions=self._extensions,
            )
        except httpx.HTTPError as exc:
            raise _transport_error(what, exc) from exc
        if resp.status_code != 200:
            raise translate_status(resp.status_code, resp.text, what=what)
        header = resp.headers.get("X-Nomad-Index")
        index = int(header) if header and header.isdigit() else None
        if not resp.content:
            return index, None
        try:
            return index, resp.json()
        except ValueError as exc:
            raise Unavailable(f"{what}: response is not JSON: {resp.text[:200]!r}") from exc

    async def _read(self, path: str, params: Params) -> Any:
        _, data = await retry_read(
            lambda: self._request("GET", path, params=params), attempts=self._read_attempts
        )
        return data

    async def query(
        self,
        path: str,
        *,
        params: Params | None = None,
        index: int = 0,
        wait: float | None = None,
        namespace: str | None = None,
    ) -> tuple[int, Any]:
        """Any GET: blocking when ``index`` > 0. Returns ``(X-Nomad-Index, JSON)``; the index
        is never below 1."""
        p = self._params(params, namespace=namespace)
        if index > 0:
            p.append(("index", str(index)))
            if wait:
                p.append(("wait", format_wait(wait)))
            read = blocking_read_timeout(wait or 300.0, self._margin)
            got, data = await self._request("GET", path, params=p, read_timeout=read)
        else:

            async def call() -> tuple[int | None, Any]:
                return await self._request("GET", path, params=p)

            got, data = await retry_read(call, attempts=self._read_attempts)
        return max(1, got or 1), data

    async def _write(
        self, method: str, path: str, body: Any = None, *, params: Params | None = None
    ) -> Any:
        if self._guard is not None:
            self._guard()
        _, data = await self._request(method, path, params=self._params(params), body=body)
        return data

    # -- jobs

    async def register_job(
        self,
        job: Mapping[str, Any],
        *,
        enforce_index: bool = False,
        job_modify_index: int = 0,
    ) -> JobWriteResponse:
        """Register (create or update) a job. With ``enforce_index``, the write happens only if
        the stored ``JobModifyIndex`` equals ``job_modify_index`` (0 = create only), else
        :class:`Conflict`. Validation failures raise :class:`BadRequest`."""
        body = {"Job": dict(job), "EnforceIndex": enforce_index, "JobModifyIndex": job_modify_index}
        raw = await self._write("POST", "/v1/jobs", body)
        return _parse(JobWriteResponse, raw, "POST /v1/jobs")

    async def read_job(self, job_id: str) -> Job:
        """The full job; :class:`NotFound` if there is none."""
        path = f"/v1/job/{_seg(job_id)}"
        return _parse(Job, await self._read(path, self._params()), f"GET {path}")

    async def get_job(self, job_id: str) -> Job | None:
        """The full job, or ``None`` if there is none."""
        try:
            return await self.read_job(job_id)
        except NotFound:
            return None

    async def list_jobs(
        self,
        *,
        prefix: str | None = None,
        meta: bool = False,
        index: int = 0,
        wait: float | None = None,
        namespace: str | None = None,
    ) -> tuple[int, list[JobStub]]:
        params: Params = []
        if prefix:
            params.append(("prefix", prefix))
        if meta:
            params.append(("meta", "true"))
        got, raw = await self.query(
            "/v1/jobs", params=params, index=index, wait=wait, namespace=namespace
        )
        return got, _parse_list(JobStub, raw, "GET /v1/jobs")

    async def deregister_job(self, job_id: str, *, purge: bool = False) -> JobWriteResponse:
        """Stop a job (``purge`` deletes it at once). An unknown job is not an error."""
        path = f"/v1/job/{_seg(job_id)}"
        params: Params = [("purge", "true")] if purge else []
        raw = await self._write("DELETE", path, params=params)
        return _parse(JobWriteResponse, raw, f"DELETE {path}")

    async def job_versions(self, job_id: str) -> list[Job]:
        path = f"/v1/job/{_seg(job_id)}/versions"
        raw = await self._read(path, self._params())
        versions = raw.get("Versions") if isinstance(raw, dict) else raw
        return _parse_list(Job, versions, f"GET {path}")

    async def job_summary(self, job_id: str) -> JobSummary:
        path = f"/v1/job/{_seg(job_id)}/summary"
        return _parse(JobSummary, await self._read(path, self._params()), f"GET {path}")

    async def job_allocations(
        self, job_id: str, *, all: bool = False, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[Allocation]]:
        path = f"/v1/job/{_seg(job_id)}/allocations"
        params: Params = [("all", "true")] if all else []
        got, raw = await self.query(path, params=params, index=index, wait=wait)
        return got, _parse_list(Allocation, raw, f"GET {path}")

    async def job_evaluations(self, job_id: str) -> list[Evaluation]:
        path = f"/v1/job/{_seg(job_id)}/evaluations"
        return _parse_list(Evaluation, await self._read(path, self._params()), f"GET {path}")

    # -- allocations and evaluations

    async def list_allocations(
        self,
        *,
        prefix: str | None = None,
        filter: str | None = None,
        resources: bool = False,
        index: int = 0,
        wait: float | None = None,
        namespace: str | None = None,
    ) -> tuple[int, list[Allocation]]:
        params: Params = []
        if prefix:
            params.append(("prefix", prefix))
        if filter:
            params.append(("filter", filter))
        if resources:
            params.append(("resources", "true"))
        got, raw = await self.query(
            "/v1/allocations", params=params, index=index, wait=wait, namespace=namespace
        )
        return got, _parse_list(Allocation, raw, "GET /v1/allocations")

    async def read_allocation(self, alloc_id: str) -> Allocation:
        path = f"/v1/allocation/{_seg(alloc_id)}"
        return _parse(Allocation, await self._read(path, self._params()), f"GET {path}")

    async def stop_allocation(self, alloc_id: str) -> dict[str, Any]:
        raw = await self._write("POST", f"/v1/allocation/{_seg(alloc_id)}/stop")
        return dict(raw or {})

    async def read_evaluation(self, eval_id: str) -> Evaluation:
        path = f"/v1/evaluation/{_seg(eval_id)}"
        return _parse(Evaluation, await self._read(path, self._params()), f"GET {path}")

    # -- nodes

    async def list_nodes(
        self, *, resources: bool = False, index: int = 0, wait: float | None = None
    ) -> tuple[int, list[Node]]:
        params: Params = [("resources", "true")] if resources else []
        got, raw = await self.query("/v1/nodes", params=params, index=index, wait=wait)
        return got, _parse_list(Node, raw, "GET /v1/nodes")

    async def read_node(self, node_id: str) -> Node:
        path = f"/v1/node/{_seg(node_id)}"
        return _parse(Node, await self._read(path, self._params()), f"GET {path}")

    async def set_node_eligibility(self, node_id: str, *, eligible: bool) -> dict[str, Any]:
        body = {"Eligibility": "eligible" if eligible else "ineligible"}
        raw = await self._write("POST", f"/v1/node/{_seg(node_id)}/eligibility", body)
        return dict(raw or {})

    async def drain_node(
        self,
        node_id: str,
        *,
        enable: bool = True,
        deadline: float = 3600.0,
        ignore_system_jobs: bool = False,
        mark_eligible: bool = False,
    ) -> dict[str, Any]:
        """Start a drain with a ``deadline`` in seconds, or cancel it with ``enable=False``."""
        spec = (
            {"Deadline": int(deadline * 1e9), "IgnoreSystemJobs": ignore_system_jobs}
            if enable
            else None
        )
        body = {"DrainSpec": spec, "MarkEligible": mark_eligible}
        raw = await self._write("POST", f"/v1/node/{_seg(node_id)}/drain", body)
        return dict(raw or {})

    # -- event stream

    async def events(
        self,
        topics: Mapping[str, Sequence[str]] | Sequence[str],
        *,
        index: int = 0,
        namespace: str | None = "*",
        on_heartbeat: Callable[[], None] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Events from ``/v1/event/stream`` from ``index`` on, heartbeats skipped.

        ``topics`` is ``["Job", "Allocation"]`` or ``{"Job": ["web"], "Allocation": []}``.
        The stream ends only by error (:class:`Unavailable`, :class:`Timeout` when even
        heartbeats stop) or when the consumer stops iterating; use it under
        ``contextlib.aclosing`` so the connection is released promptly. ``on_heartbeat`` is
        called for every line received, heartbeats included, so a caller can tell a quiet
        stream from a dead one.
        """
        params = self._params(_topic_params(topics), namespace=namespace)
        if index > 0:
            params.append(("index", str(index)))
        what = "GET /v1/event/stream"
        timeout = httpx.Timeout(self._timeout, read=self._stream_read_timeout)
        try:
            async with self._http.stream(
                "GET",
                "/v1/event/stream",
                params=tuple(params),
                timeout=timeout,
                extensions=self._extensions,
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise translate_status(resp.status_code, resp.text, what=what)
                async for line in resp.aiter_lines():
                    if on_heartbeat is not None:
                        on_heartbeat()
                    for event in _events_of_line(line, what):
                        yield event
        except httpx.HTTPError as exc:
            raise _transport_error(what, exc) from exc
        raise Unavailable(f"{what}: the server closed the stream")


def _events_of_line(line: str, what: str) -> list[Event]:
    text = line.strip()
    if not text or text == "{}":
        return []
    try:
        frame = json.loads(text)
    except ValueError as exc:
        raise Unavailable(f"{what}: bad frame {text[:200]!r}") from exc
    if not isinstance(frame, dict):
        raise Unavailable(f"{what}: bad frame {text[:200]!r}")
    if frame.get("Error"):
        raise Unavailable(f"{what}: {frame['Error']}")
    frame_index = int(frame.get("Index") or 0)
    out = []
    for raw in frame.get("Events") or ():
        event = _parse(Event, raw, what)
        if not event.index:
            event = event.model_copy(update={"index": frame_index})
        out.append(event)
    return out


def _seg(value: str) -> str:
    """A path segment, escaped (job ids may contain ``/`` only in theory, but be safe)."""
    return quote(value, safe="")
