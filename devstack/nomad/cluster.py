"""The Nomad server's behaviour: jobs, evaluations, scheduling, nodes and allocation updates.

This is what the HTTP routes call. It owns the :class:`StateStore` and follows Nomad's write
paths: a job write commits the job and its evaluation at one index; an evaluation worker runs
the reconciler (what to stop, update in place, place) and the pure :mod:`scheduler` (where),
blocks evaluations that cannot place everything and unblocks them when capacity frees; node
and client updates mark allocations lost, migrate them, and reschedule failures under the
group's reschedule policy. Everything runs on the server's event loop, so there are no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import jobs as jobspec
from .events import Event
from .scheduler import ClusterView, NodeInfo, NodeUsage, place_group
from .state import (
    TERMINAL_CLIENT,
    TERMINAL_EVAL,
    JobKey,
    StateStore,
    alloc_client_terminal,
    alloc_terminal,
    alloc_usage,
)
from .util import SECOND, new_id, now_ns

if TYPE_CHECKING:
    from .client import NodeClient
    from .consul_sync import ConsulSync

log = logging.getLogger("devstack.nomad")

NOMAD_VERSION = "1.9.7"
CONSUL_VERSION = "1.20.6"
_ALLOC_INDEX = re.compile(r"\[(\d+)\]$")


class NomadError(Exception):
    """An error Nomad reports as plain text with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class NomadConfig:
    region: str = "global"
    datacenter: str = "dc1"
    nodes: int = 3
    node_cpu: int = 4000
    node_memory: int = 8192
    node_disk: int = 51200
    node_meta: dict[str, str] = field(default_factory=dict)
    consul_addr: str | None = None
    consul_token: str | None = None
    acl_master_token: str | None = None
    # Simulated docker tasks start this long after the client receives them.
    docker_start_delay: float = 0.5
    event_heartbeat: float = 10.0
    data_dir: str | None = None
    node_ip: str = "127.0.0.1"
    seed: int | None = None
    # raw_exec kill grace period is min(task KillTimeout, this), to keep shutdowns quick.
    max_kill_timeout: float = 5.0


def rfc3339(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def alloc_index(name: str) -> int:
    m = _ALLOC_INDEX.search(name)
    return int(m.group(1)) if m else 0


def strip_zero(obj: dict[str, Any]) -> dict[str, Any]:
    """Struct-level ``omitempty`` (Evaluation): zero-valued fields are left out."""
    return {k: v for k, v in obj.items() if v not in (None, "", 0, False, {}, [])}


def alloc_stub(a: dict[str, Any], resources: bool = False, task_states: bool = True) -> dict:
    job = a.get("Job") or {}
    stub: dict[str, Any] = {
        "ID": a["ID"],
        "EvalID": a["EvalID"],
        "Name": a["Name"],
        "Namespace": a["Namespace"],
        "NodeID": a["NodeID"],
        "NodeName": a["NodeName"],
        "JobID": a["JobID"],
        "JobType": job.get("Type", ""),
        "JobVersion": job.get("Version", 0),
        "TaskGroup": a["TaskGroup"],
    }
    if resources:
        stub["AllocatedResources"] = a["AllocatedResources"]
    stub.update(
        {
            "DesiredStatus": a["DesiredStatus"],
            "DesiredDescription": a["DesiredDescription"],
            "ClientStatus": a["ClientStatus"],
            "ClientDescription": a["ClientDescription"],
            "DesiredTransition": a["DesiredTransition"],
            "TaskStates": a["TaskStates"] if task_states else None,
            "DeploymentStatus": a["DeploymentStatus"],
            "FollowupEvalID": a["FollowupEvalID"],
            "NextAllocation": a["NextAllocation"],
            "RescheduleTracker": a["RescheduleTracker"],
            "PreemptedAllocations": a["PreemptedAllocations"],
            "PreemptedByAllocation": a["PreemptedByAllocation"],
            "CreateIndex": a["CreateIndex"],
            "ModifyIndex": a["ModifyIndex"],
            "CreateTime": a["CreateTime"],
            "ModifyTime": a["ModifyTime"],
        }
    )
    return stub


def node_stub(n: dict[str, Any], resources: bool = False, os_attr: bool = False) -> dict:
    stub: dict[str, Any] = {
        "Address": n["Attributes"].get("unique.network.ip-address", ""),
        "ID": n["ID"],
        "Attributes": {"os.name": n["Attributes"].get("os.name", "")} if os_attr else None,
        "Datacenter": n["Datacenter"],
        "Name": n["Name"],
        "NodeClass": n["NodeClass"],
        "NodePool": n["NodePool"],
        "Version": n["Attributes"].get("nomad.version", ""),
        "Drain": n["DrainStrategy"] is not None,
        "SchedulingEligibility": n["SchedulingEligibility"],
        "Status": n["Status"],
        "StatusDescription": n["StatusDescription"],
        "Drivers": n["Drivers"],
        "HostVolumes": n["HostVolumes"],
        "LastDrain": n["LastDrain"],
        "CreateIndex": n["CreateIndex"],
        "ModifyIndex": n["ModifyIndex"],
    }
    if resources:
        stub["NodeResources"] = n["NodeResources"]
        stub["ReservedResources"] = n["ReservedResources"]
    return stub


def job_stub(job: dict[str, Any], summary: dict[str, Any] | None, meta: bool = False) -> dict:
    stub = {
        "ID": job["ID"],
        "ParentID": job["ParentID"],
        "Name": job["Name"],
        "Namespace": job["Namespace"],
        "Datacenters": job["Datacenters"],
        "NodePool": job["NodePool"],
        "Multiregion": job["Multiregion"],
        "Type": job["Type"],
        "Priority": job["Priority"],
        "Periodic": job["Periodic"] is not None,
        "ParameterizedJob": job["ParameterizedJob"] is not None and not job["Dispatched"],
        "Stop": job["Stop"],
        "Status": job["Status"],
        "StatusDescription": job["StatusDescription"],
        "JobSummary": summary,
        "CreateIndex": job["CreateIndex"],
        "ModifyIndex": job["ModifyIndex"],
        "JobModifyIndex": job["JobModifyIndex"],
        "SubmitTime": job["SubmitTime"],
    }
    if meta:
        stub["Meta"] = job["Meta"]
    return stub


class NomadCluster:
    """One region's server plus its simulated client nodes."""

    def __init__(self, config: NomadConfig | None = None) -> None:
        self.config = config or NomadConfig()
        self.state = StateStore()
        self.rng = random.Random(self.config.seed)
        self.leader = "127.0.0.1:4647"
        self.http_addr = "127.0.0.1:4646"
        self.clients: dict[str, NodeClient] = {}
        self.consul: ConsulSync | None = None
        self._own_data_dir = self.config.data_dir is None
        self.data_dir = self.config.data_dir or tempfile.mkdtemp(prefix="devstack-nomad-")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._blocked: dict[JobKey, str] = {}
        self._node_infos: dict[str, tuple[int, NodeInfo]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._worker: asyncio.Task[None] | None = None
        self._unblock_pending = False
        self.running = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        from .consul_sync import ConsulSync

        if self.config.consul_addr:
            self.consul = ConsulSync(self.config.consul_addr, self.config.consul_token)
            await self.consul.start()
        for i in range(self.config.nodes):
            self.add_node(name=f"nomad-client-{i + 1}")
        self._worker = asyncio.get_running_loop().create_task(self._eval_worker())
        self.running = True

    async def stop(self) -> None:
        """Kill every task, deregister every service, stop the worker; idempotent."""
        if not self.running:
            return
        self.running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await asyncio.gather(*(c.shutdown() for c in self.clients.values()))
        if self.consul is not None:
            await self.consul.close()
        self.state.broker.close()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- helpers ----------------------------------------------------------------------------

    def _job_status(self, job: dict[str, Any]) -> str:
        key = (job["Namespace"], job["ID"])
        if (
            job["Type"] in ("system", "sysbatch")
            or job["Periodic"] is not None
            or (job["ParameterizedJob"] is not None and not job["Dispatched"])
        ):
            return "dead" if job["Stop"] else "running"
        if any(not alloc_terminal(a) for a in self.state.job_allocs(key)):
            return "running"
        evals = self.state.job_evals(key)
        if any(e["Status"] not in TERMINAL_EVAL for e in evals):
            return "pending"
        if evals or job["Stop"]:
            return "dead"
        return "pending"

    def _summary(self, job: dict[str, Any], queued: dict[str, int] | None = None) -> dict:
        key = (job["Namespace"], job["ID"])
        old = self.state.summaries.get(key)
        groups: dict[str, dict[str, int]] = {}
        for g in job["TaskGroups"] or []:
            prev = (old or {}).get("Summary", {}).get(g["Name"], {})
            groups[g["Name"]] = {
                "Queued": prev.get("Queued", 0),
                "Complete": 0,
                "Failed": 0,
                "Running": 0,
                "Starting": 0,
                "Lost": 0,
                "Unknown": 0,
            }
        if queued:
            for g, n in queued.items():
                if g in groups:
                    groups[g]["Queued"] = n
        field_of = {
            "pending": "Starting",
            "running": "Running",
            "complete": "Complete",
            "failed": "Failed",
            "lost": "Lost",
            "unknown": "Unknown",
        }
        for a in self.state.job_allocs(key):
            if (a.get("Job") or {}).get("CreateIndex") != job["CreateIndex"]:
                continue
            g = groups.get(a["TaskGroup"])
            if g is not None:
                g[field_of[a["ClientStatus"]]] += 1
        return {
            "JobID": job["ID"],
            "Namespace": job["Namespace"],
            "Summary": groups,
            "Children": {"Pending": 0, "Running": 0, "Dead": 0},
            "CreateIndex": old["CreateIndex"] if old else job["CreateIndex"],
            "ModifyIndex": old["ModifyIndex"] if old else job["CreateIndex"],
        }

    def _refresh_job(
        self,
        key: JobKey,
        index: int,
        events: list[Event],
        queued: dict[str, int] | None = None,
        etype: str = "PlanResult",
    ) -> None:
        """Recompute a job's summary and derived status after its allocs or evals changed."""
        job = self.state.jobs.get(key)
        if job is None:
            return
        summary = self._summary(job, queued)
        old = self.state.summaries.get(key)
        if old is None or old["Summary"] != summary["Summary"]:
            summary["ModifyIndex"] = index
            self.state.summaries[key] = summary
            self.state.touch("job_summary", index)
        status = self._job_status(job)
        if status != job["Status"]:
            job = {**job, "Status": status, "ModifyIndex": index}
            self.state.put_job(job, index)
            # One raft write, one event type: a status change carries its write's type.
            events.append(self._job_event(etype, job))

    def _job_event(self, etype: str, job: dict[str, Any]) -> Event:
        return Event("Job", etype, job["ID"], job["Namespace"], {"Job": job})

    def _alloc_event(self, etype: str, a: dict[str, Any]) -> Event:
        return Event(
            "Allocation",
            etype,
            a["ID"],
            a["Namespace"],
            {"Allocation": {**a, "Job": None}},
            [a["JobID"], a["DeploymentID"]],
        )

    def _eval_event(self, etype: str, ev: dict[str, Any]) -> Event:
        return Event(
            "Evaluation",
            etype,
            ev["ID"],
            ev["Namespace"],
            {"Evaluation": strip_zero(ev)},
            [ev["JobID"], ev["DeploymentID"]],
        )

    def _node_event(self, etype: str, node: dict[str, Any]) -> Event:
        return Event("Node", etype, node["ID"], "", {"Node": node})

    def _new_eval(
        self,
        job: dict[str, Any],
        index: int,
        triggered_by: str,
        *,
        status: str = "pending",
        node_id: str = "",
        wait_until: int = 0,
        description: str = "",
        previous: str = "",
    ) -> dict[str, Any]:
        now = now_ns()
        return {
            "ID": new_id(),
            "Namespace": job["Namespace"],
            "Priority": job["Priority"],
            "Type": job["Type"],
            "TriggeredBy": triggered_by,
            "JobID": job["ID"],
            "JobModifyIndex": job["JobModifyIndex"],
            "NodeID": node_id,
            "NodeModifyIndex": 0,
            "DeploymentID": "",
            "Status": status,
            "StatusDescription": description,
            "Wait": 0,
            "WaitUntil": rfc3339(wait_until) if wait_until else None,
            "NextEval": "",
            "PreviousEval": previous,
            "BlockedEval": "",
            "RelatedEvals": None,
            "FailedTGAllocs": None,
            "ClassEligibility": None,
            "QuotaLimitReached": "",
            "EscapedComputedClass": False,
            "AnnotatePlan": False,
            "QueuedAllocations": None,
            "LeaderACL": "",
            "SnapshotIndex": 0,
            "CreateIndex": index,
            "ModifyIndex": index,
            "CreateTime": now,
            "ModifyTime": now,
        }

    def _enqueue(self, eval_id: str) -> None:
        self._timers.pop(eval_id, None)
        self._queue.put_nowait(eval_id)

    def _enqueue_later(self, eval_id: str, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers[eval_id] = loop.call_later(max(delay_s, 0), self._enqueue, eval_id)

    # --- jobs -------------------------------------------------------------------------------

    def register_job(
        self, body: Any, path_id: str | None = None, namespace: str = "default"
    ) -> dict[str, Any]:
        try:
            raw, opts = jobspec.decode_register_body(body)
            if not raw.text("ID"):
                raise NomadError(400, "Job ID hasn't been provided")
            if path_id is not None and raw.text("ID") != path_id:
                raise NomadError(400, "Job ID does not match name")
            job = jobspec.canonicalize(raw, namespace)
        except jobspec.DecodeError as exc:
            raise NomadError(400, str(exc)) from exc
        try:
            jobspec.validate(job)
        except jobspec.ValidationError as exc:
            raise NomadError(500, str(exc)) from exc
        key = (job["Namespace"], job["ID"])
        existing = self.state.jobs.get(key)
        if opts["EnforceIndex"]:
            want = opts["JobModifyIndex"]
            prefix = f"Enforcing job modify index {want}"
            if want == 0 and existing is not None:
                raise NomadError(500, f"{prefix}: job already exists")
            if want != 0 and existing is None:
                raise NomadError(500, f"{prefix}: job does not exist")
            if existing is not None and existing["JobModifyIndex"] != want:
                raise NomadError(
                    500,
                    f"{prefix}: job exists with conflicting job modify index: "
                    f"{existing['JobModifyIndex']}",
                )
        creates_eval = job["Periodic"] is None and job["ParameterizedJob"] is None
        index = self.state.begin()
        events: list[Event] = []
        if existing is not None and not jobspec.spec_changed(existing, job):
            job_modify_index = existing["JobModifyIndex"]
        else:
            now = now_ns()
            job["Version"] = existing["Version"] + 1 if existing else 0
            job["CreateIndex"] = existing["CreateIndex"] if existing else index
            job["ModifyIndex"] = index
            job["JobModifyIndex"] = index
            job["SubmitTime"] = now
            job["Status"] = existing["Status"] if existing else "pending"
            self.state.put_job(job, index)
            self.state.versions.setdefault(key, []).insert(0, job)
            del self.state.versions[key][6:]
            self.state.touch("job_version", index)
            if existing is None:
                self.state.summaries[key] = self._summary(job)
                self.state.summaries[key]["ModifyIndex"] = index
                self.state.touch("job_summary", index)
            events.append(self._job_event("JobRegistered", job))
            job_modify_index = index
        job = self.state.jobs[key]
        eval_id, eval_index = "", 0
        if creates_eval:
            ev = self._new_eval(job, index, "job-register")
            ev["JobModifyIndex"] = job_modify_index
            self.state.put_eval(ev, index)
            events.append(self._eval_event("JobRegistered", ev))
            eval_id, eval_index = ev["ID"], index
        self._refresh_job(key, index, events, etype="JobRegistered")
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        return {
            "EvalID": eval_id,
            "EvalCreateIndex": eval_index,
            "JobModifyIndex": job_modify_index,
            "Warnings": "",
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def deregister_job(self, job_id: str, namespace: str, purge: bool) -> dict[str, Any]:
        key = (namespace, job_id)
        existing = self.state.jobs.get(key)
        reply: dict[str, Any] = {
            "EvalID": "",
            "EvalCreateIndex": 0,
            "JobModifyIndex": 0,
            "VolumeEvalID": "",
            "VolumeEvalIndex": 0,
            "Index": 0,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }
        if existing is None:
            return reply
        index = self.state.begin()
        events: list[Event] = []
        if purge:
            del self.state.jobs[key]
            self.state.versions.pop(key, None)
            self.state.summaries.pop(key, None)
            for table in ("jobs", "job_version", "job_summary"):
                self.state.touch(table, index)
            job = existing
            events.append(self._job_event("JobDeregistered", job))
        else:
            job = {
                **existing,
                "Stop": True,
                "Version": existing["Version"] + 1,
                "ModifyIndex": index,
                "JobModifyIndex": index,
                "SubmitTime": now_ns(),
            }
            self.state.put_job(job, index)
            self.state.versions.setdefault(key, []).insert(0, job)
            del self.state.versions[key][6:]
            self.state.touch("job_version", index)
            events.append(self._job_event("JobDeregistered", job))
        ev = self._new_eval(job, index, "job-deregister")
        ev["JobModifyIndex"] = index
        self.state.put_eval(ev, index)
        events.append(self._eval_event("JobDeregistered", ev))
        self._refresh_job(key, index, events, etype="JobDeregistered")
        self.state.commit(index, events)
        self._enqueue(ev["ID"])
        reply.update(
            {"EvalID": ev["ID"], "EvalCreateIndex": index, "JobModifyIndex": index, "Index": index}
        )
        return reply

    def evaluate_job(self, job_id: str, namespace: str) -> dict[str, Any]:
        job = self.state.jobs.get((namespace, job_id))
        if job is None:
            raise NomadError(404, "job not found")
        index = self.state.begin()
        ev = self._new_eval(job, index, "job-register")
        self.state.put_eval(ev, index)
        events = [self._eval_event("EvaluationUpdated", ev)]
        self._refresh_job((namespace, job_id), index, events)
        self.state.commit(index, events)
        self._enqueue(ev["ID"])
        return {
            "EvalID": ev["ID"],
            "EvalCreateIndex": index,
            "JobModifyIndex": job["JobModifyIndex"],
            "Index": index,
        }

    # --- evaluation processing --------------------------------------------------------------

    async def _eval_worker(self) -> None:
        while True:
            eval_id = await self._queue.get()
            try:
                self.process_eval(eval_id)
            except Exception:
                log.exception("evaluation %s failed", eval_id)
            # Let HTTP handlers and clients run between evaluations under load.
            if self._queue.qsize() and self._queue.qsize() % 16 == 0:
                await asyncio.sleep(0)

    def _node_info(self, n: dict[str, Any]) -> NodeInfo:
        cached = self._node_infos.get(n["ID"])
        if cached is not None and cached[0] == n["ModifyIndex"]:
            return cached[1]
        res, rsv = n["NodeResources"], n["ReservedResources"]
        reserved_ports: set[int] = set()
        for part in (rsv["Networks"]["ReservedHostPorts"] or "").split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                reserved_ports.update(range(int(lo), int(hi) + 1))
            elif part.isdigit():
                reserved_ports.add(int(part))
        info = NodeInfo(
            id=n["ID"],
            name=n["Name"],
            datacenter=n["Datacenter"],
            node_pool=n["NodePool"],
            node_class=n["NodeClass"],
            region=self.config.region,
            status=n["Status"],
            eligible=n["SchedulingEligibility"] == "eligible",
            draining=n["DrainStrategy"] is not None,
            attributes=n["Attributes"],
            meta=n["Meta"],
            drivers=frozenset(
                d for d, info in n["Drivers"].items() if info["Detected"] and info["Healthy"]
            ),
            ip=n["Attributes"]["unique.network.ip-address"],
            cpu=res["Cpu"]["CpuShares"] - rsv["Cpu"]["CpuShares"],
            memory_mb=res["Memory"]["MemoryMB"] - rsv["Memory"]["MemoryMB"],
            disk_mb=res["Disk"]["DiskMB"] - rsv["Disk"]["DiskMB"],
            min_port=res["MinDynamicPort"],
            max_port=res["MaxDynamicPort"],
            reserved_host_ports=frozenset(reserved_ports),
        )
        self._node_infos[n["ID"]] = (n["ModifyIndex"], info)
        return info

    def _view(self, exclude: set[str], job_key: JobKey) -> ClusterView:
        """The scheduler's input: nodes, their usage (without ``exclude``), this job's spread."""
        view = ClusterView(nodes=[self._node_info(n) for n in self.state.nodes.values()])
        for info in view.nodes:
            cpu, mem, disk = self.state.node_usage[info.id]
            view.usage[info.id] = NodeUsage(cpu, mem, disk)
            ports = set(self.state.node_ports[info.id])
            view.ports[info.id] = ports
            view.ip_ports.setdefault(info.ip, set()).update(ports)
        for alloc_id in exclude:
            a = self.state.allocs[alloc_id]
            if alloc_client_terminal(a) or a["NodeID"] not in view.usage:
                continue
            cpu, mem, disk = alloc_usage(a)
            used = view.usage[a["NodeID"]]
            used.cpu -= cpu
            used.memory_mb -= mem
            used.disk_mb -= disk
            for p in a["AllocatedResources"]["Shared"]["Ports"] or []:
                if self.state.node_ports[a["NodeID"]][p["Value"]] <= 1:
                    view.ports[a["NodeID"]].discard(p["Value"])
        for a in self.state.job_allocs(job_key):
            if alloc_terminal(a) or a["ID"] in exclude:
                continue
            groups = view.job_allocs.setdefault(a["NodeID"], {})
            groups[a["TaskGroup"]] = groups.get(a["TaskGroup"], 0) + 1
        return view

    def _reschedule_decision(self, a: dict[str, Any], now: int) -> tuple[str, int, int]:
        """("now" | "later" | "never", when ns, delay ns) for a failed allocation."""
        group = jobspec.group_spec(a["Job"], a["TaskGroup"])
        policy = (group or {}).get("ReschedulePolicy")
        if not policy:
            return "never", 0, 0
        events = (a["RescheduleTracker"] or {}).get("Events") or []
        if not policy["Unlimited"]:
            window = [e for e in events if e["RescheduleTime"] > now - policy["Interval"]]
            if len(window) >= policy["Attempts"]:
                return "never", 0, 0
        delay = policy["Delay"]
        if events and policy["DelayFunction"] == "exponential":
            delay = events[-1]["Delay"] * 2
        elif events and policy["DelayFunction"] == "fibonacci":
            prev = events[-2]["Delay"] if len(events) > 1 else 0
            delay = events[-1]["Delay"] + prev
        if policy["MaxDelay"]:
            delay = min(delay, policy["MaxDelay"])
        when = a["ModifyTime"] + delay
        return ("now" if now >= when else "later"), when, delay

    def process_eval(self, eval_id: str) -> None:
        ev = self.state.evals.get(eval_id)
        if ev is None or ev["Status"] != "pending":
            return
        key = (ev["Namespace"], ev["JobID"])
        job = self.state.jobs.get(key)
        now = now_ns()
        stops: dict[str, str] = {}
        inplace: list[dict[str, Any]] = []
        followups: list[tuple[dict[str, Any], int]] = []  # (failed alloc, when)
        # (group, name, previous alloc or None, reschedule delay)
        wanted: list[tuple[str, str, dict[str, Any] | None, int]] = []
        stopped = job is None or job["Stop"]
        groups = {} if stopped or job is None else {g["Name"]: g for g in job["TaskGroups"]}
        held: dict[str, set[str]] = {g: set() for g in groups}
        live: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}
        is_system = job is not None and job["Type"] in ("system", "sysbatch")
        lost: dict[str, dict[str, Any]] = {}
        for a in self.state.job_allocs(key):
            if a["ClientStatus"] == "lost" and not a["NextAllocation"]:
                lost[a["Name"]] = a
            if a["DesiredStatus"] != "run":
                continue
            gname = a["TaskGroup"]
            if gname not in groups:
                if not alloc_client_terminal(a):
                    stops[a["ID"]] = "alloc not needed due to job update"
                continue
            if a["ClientStatus"] == "lost":
                continue
            if a["ClientStatus"] == "complete":
                if job is not None and job["Type"] in ("batch", "sysbatch"):
                    held[gname].add(a["Name"] if not is_system else a["NodeID"])
                continue
            if a["ClientStatus"] == "failed":
                if a["NextAllocation"]:
                    continue
                decision, when, delay = self._reschedule_decision(a, now)
                if decision == "now":
                    wanted.append((gname, a["Name"], a, delay))
                elif decision == "later" and not a["FollowupEvalID"]:
                    followups.append((a, when))
                held[gname].add(a["Name"] if not is_system else a["NodeID"])
                continue
            if (a["DesiredTransition"] or {}).get("Migrate"):
                stops[a["ID"]] = "alloc is being migrated"
                wanted.append((gname, a["Name"], a, 0))
                continue
            live[gname].append(a)
        assert job is not None or not groups
        for gname, group in groups.items():
            assert job is not None
            current = []
            for a in sorted(live[gname], key=lambda x: (alloc_index(x["Name"]), x["CreateIndex"])):
                if a["Job"]["JobModifyIndex"] != job["JobModifyIndex"] or a["Job"] is not job:
                    if jobspec.group_destructively_changed(a["Job"], job, gname):
                        stops[a["ID"]] = "alloc is being updated due to job update"
                        wanted.append((gname, a["Name"], None, 0))
                        continue
                    if a["Job"] is not job:
                        inplace.append(a)
                current.append(a)
            if is_system:
                for a in current:
                    held[gname].add(a["NodeID"])
                continue
            names = set()
            for a in current:
                if alloc_index(a["Name"]) >= group["Count"] or a["Name"] in names:
                    stops[a["ID"]] = "alloc not needed due to job update"
                    inplace[:] = [x for x in inplace if x["ID"] != a["ID"]]
                else:
                    names.add(a["Name"])
            names |= held[gname]
            names |= {w[1] for w in wanted if w[0] == gname}
            for i in range(group["Count"]):
                name = f"{job['ID']}.{gname}[{i}]"
                if name not in names:
                    # A replacement for a lost allocation links back to it.
                    wanted.append((gname, name, lost.get(name), 0))
        wanted = [
            w
            for w in wanted
            if w[0] in groups and (is_system or alloc_index(w[1]) < groups[w[0]]["Count"])
        ]
        self._apply_plan(ev, job, key, stops, inplace, wanted, followups, held, now)

    def _apply_plan(
        self,
        ev: dict[str, Any],
        job: dict[str, Any] | None,
        key: JobKey,
        stops: dict[str, str],
        inplace: list[dict[str, Any]],
        wanted: list[tuple[str, str, dict[str, Any] | None, int]],
        followups: list[tuple[dict[str, Any], int]],
        held: dict[str, set[str]],
        now: int,
    ) -> None:
        placed: list[dict[str, Any]] = []
        failed: dict[str, dict[str, Any]] = {}
        queued: dict[str, int] = {}
        index = self.state.begin()
        if job is not None and (
            wanted or (job["Type"] in ("system", "sysbatch") and not job["Stop"])
        ):
            view = self._view(set(stops), key)
            if job["Type"] in ("system", "sysbatch"):
                self._place_system(job, view, held, ev, index, placed, failed, queued)
            else:
                by_group: dict[str, list[tuple[str, dict[str, Any] | None, int]]] = {}
                for gname, name, prev, delay in wanted:
                    by_group.setdefault(gname, []).append((name, prev, delay))
                for gname, items in by_group.items():
                    group = jobspec.group_spec(job, gname)
                    assert group is not None
                    items.sort(key=lambda x: alloc_index(x[0]))
                    result = place_group(view, job, group, len(items), self.rng)
                    for (name, prev, delay), p in zip(items, result.placements, strict=False):
                        placed.append(
                            self._new_alloc(job, gname, name, p, ev, index, prev, delay, now)
                        )
                    unplaced = len(items) - len(result.placements)
                    queued[gname] = unplaced
                    if result.failed is not None:
                        failed[gname] = result.failed
        events: list[Event] = []
        updated: list[dict[str, Any]] = []
        for alloc_id, desc in stops.items():
            a = self.state.allocs[alloc_id]
            a = {
                **a,
                "DesiredStatus": "stop",
                "DesiredDescription": desc,
                "ModifyIndex": index,
                "AllocModifyIndex": index,
                "ModifyTime": now,
            }
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            updated.append(a)
        for a in inplace:
            if a["ID"] in stops or job is None:
                continue
            a = {**a, "Job": job, "ModifyIndex": index, "AllocModifyIndex": index}
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
        for a in placed:
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            prev_id = a["PreviousAllocation"]
            if prev_id and prev_id in self.state.allocs:
                prev = {
                    **self.state.allocs[prev_id],
                    "NextAllocation": a["ID"],
                    "ModifyIndex": index,
                }
                self.state.put_alloc(prev, index)
                events.append(self._alloc_event("PlanResult", prev))
        for a, when in followups:
            if job is None:
                continue
            fe = self._new_eval(
                job,
                index,
                "alloc-failure",
                wait_until=when,
                description="created for delayed rescheduling",
                previous=ev["ID"],
            )
            self.state.put_eval(fe, index)
            events.append(self._eval_event("EvaluationUpdated", fe))
            a = {**a, "FollowupEvalID": fe["ID"], "ModifyIndex": index}
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            self._enqueue_later(fe["ID"], (when - now_ns()) / 1e9)
        # The evaluation itself: complete, or complete plus a blocked one that will retry.
        old_blocked = self._blocked.get(key)
        ev = {
            **ev,
            "Status": "complete",
            "QueuedAllocations": queued or None,
            "ModifyIndex": index,
            "ModifyTime": now_ns(),
        }
        if failed:
            ev["FailedTGAllocs"] = failed
            if ev["TriggeredBy"] == "queued-allocs" or ev["ID"] == old_blocked:
                ev["Status"] = "blocked"
                self._blocked[key] = ev["ID"]
            else:
                assert job is not None
                blocked = self._new_eval(
                    job,
                    index,
                    "queued-allocs",
                    status="blocked",
                    description="created to place remaining allocations",
                    previous=ev["ID"],
                )
                blocked["FailedTGAllocs"] = failed
                blocked["ClassEligibility"] = {}
                ev["BlockedEval"] = blocked["ID"]
                self.state.put_eval(blocked, index)
                events.append(self._eval_event("EvaluationUpdated", blocked))
                if old_blocked and old_blocked in self.state.evals:
                    self._cancel_eval(old_blocked, index, events)
                self._blocked[key] = blocked["ID"]
        else:
            ev["FailedTGAllocs"] = None
            if old_blocked == ev["ID"]:
                del self._blocked[key]
            elif old_blocked and old_blocked in self.state.evals:
                self._cancel_eval(old_blocked, index, events)
                del self._blocked[key]
        self.state.put_eval(ev, index)
        events.append(self._eval_event("EvaluationUpdated", ev))
        if job is not None:
            self._refresh_job(key, index, events, queued)
        self.state.commit(index, events)
        for a in placed:
            client = self.clients.get(a["NodeID"])
            if client is not None:
                client.run_alloc(a)
        for a in updated:
            client = self.clients.get(a["NodeID"])
            if client is not None:
                client.stop_alloc(a["ID"])

    def _cancel_eval(self, eval_id: str, index: int, events: list[Event]) -> None:
        old = self.state.evals[eval_id]
        if old["Status"] in TERMINAL_EVAL:
            return
        old = {
            **old,
            "Status": "canceled",
            "StatusDescription": "evaluation superseded by a newer evaluation of the job",
            "ModifyIndex": index,
            "ModifyTime": now_ns(),
        }
        self.state.put_eval(old, index)
        self._timers.pop(eval_id, None)
        events.append(self._eval_event("EvaluationUpdated", old))

    def _place_system(
        self,
        job: dict[str, Any],
        view: ClusterView,
        held: dict[str, set[str]],
        ev: dict[str, Any],
        index: int,
        placed: list[dict[str, Any]],
        failed: dict[str, dict[str, Any]],
        queued: dict[str, int],
    ) -> None:
        """System jobs: one allocation of each group on every feasible node."""
        nodes = list(view.nodes)
        for group in job["TaskGroups"]:
            gname = group["Name"]
            queued[gname] = 0
            for node in nodes:
                if node.id in held.get(gname, set()):
                    continue
                single = ClusterView(
                    nodes=[node],
                    usage=view.usage,
                    ports=view.ports,
                    ip_ports=view.ip_ports,
                    job_allocs=view.job_allocs,
                )
                result = place_group(single, job, group, 1, self.rng)
                if result.placements:
                    name = f"{job['ID']}.{gname}[0]"
                    placed.append(
                        self._new_alloc(
                            job, gname, name, result.placements[0], ev, index, None, 0, now_ns()
                        )
                    )
                elif result.failed and result.failed["NodesExhausted"]:
                    queued[gname] += 1
                    failed[gname] = result.failed

    def _new_alloc(
        self,
        job: dict[str, Any],
        gname: str,
        name: str,
        p: Any,
        ev: dict[str, Any],
        index: int,
        prev: dict[str, Any] | None,
        delay: int,
        now: int,
    ) -> dict[str, Any]:
        group = jobspec.group_spec(job, gname)
        assert group is not None
        tasks = {}
        task_resources = {}
        lifecycles = {}
        for t in group["Tasks"]:
            cpu, mem = p.task_resources[t["Name"]]
            tasks[t["Name"]] = {
                "Cpu": {"CpuShares": cpu, "ReservedCores": None},
                "Memory": {"MemoryMB": mem, "MemoryMaxMB": t["Resources"]["MemoryMaxMB"]},
                "Networks": None,
                "Devices": None,
            }
            task_resources[t["Name"]] = {
                "CPU": cpu,
                "Cores": 0,
                "MemoryMB": mem,
                "MemoryMaxMB": t["Resources"]["MemoryMaxMB"],
                "DiskMB": 0,
                "IOPS": 0,
                "Networks": None,
                "Devices": None,
            }
            lifecycles[t["Name"]] = t["Lifecycle"]
        tracker = None
        if prev is not None and prev["ClientStatus"] == "failed":
            old_events = (prev["RescheduleTracker"] or {}).get("Events") or []
            tracker = {
                "Events": [
                    *old_events,
                    {
                        "RescheduleTime": now,
                        "PrevAllocID": prev["ID"],
                        "PrevNodeID": prev["NodeID"],
                        "Delay": delay,
                    },
                ],
                "LastReschedule": "ok",
            }
        total_cpu = sum(c for c, _ in p.task_resources.values())
        total_mem = sum(m for _, m in p.task_resources.values())
        return {
            "ID": new_id(),
            "Namespace": job["Namespace"],
            "EvalID": ev["ID"],
            "Name": name,
            "NodeID": p.node_id,
            "NodeName": p.node_name,
            "JobID": job["ID"],
            "Job": job,
            "TaskGroup": gname,
            "Resources": {
                "CPU": total_cpu,
                "Cores": 0,
                "MemoryMB": total_mem,
                "MemoryMaxMB": 0,
                "DiskMB": p.disk_mb,
                "IOPS": 0,
                "Networks": p.networks or None,
                "Devices": None,
            },
            "SharedResources": {"DiskMB": p.disk_mb, "Networks": p.networks or None},
            "TaskResources": task_resources,
            "AllocatedResources": {
                "Tasks": tasks,
                "TaskLifecycles": lifecycles,
                "Shared": {"DiskMB": p.disk_mb, "Networks": p.networks or None, "Ports": p.ports},
            },
            "Metrics": p.metrics,
            "DesiredStatus": "run",
            "DesiredDescription": "",
            "DesiredTransition": {
                "Migrate": None,
                "Reschedule": None,
                "ForceReschedule": None,
                "NoShutdownDelay": None,
            },
            "ClientStatus": "pending",
            "ClientDescription": "",
            "TaskStates": None,
            "AllocStates": None,
            "PreviousAllocation": prev["ID"] if prev is not None else "",
            "NextAllocation": "",
            "DeploymentID": "",
            "DeploymentStatus": None,
            "RescheduleTracker": tracker,
            "NetworkStatus": None,
            "FollowupEvalID": "",
            "PreemptedAllocations": None,
            "PreemptedByAllocation": "",
            "SignedIdentities": None,
            "CreateIndex": index,
            "ModifyIndex": index,
            "AllocModifyIndex": index,
            "CreateTime": now,
            "ModifyTime": now,
        }

    def _unblock_soon(self) -> None:
        """Capacity may have freed: retry every blocked evaluation, once per loop turn."""
        if self._unblock_pending or not self._blocked:
            return
        self._unblock_pending = True
        asyncio.get_running_loop().call_soon(self._unblock)

    def _unblock(self) -> None:
        self._unblock_pending = False
        if not self._blocked or not self.running:
            return
        index = self.state.begin()
        events: list[Event] = []
        ids = []
        for eval_id in list(self._blocked.values()):
            ev = self.state.evals.get(eval_id)
            if ev is None or ev["Status"] != "blocked":
                continue
            ev = {**ev, "Status": "pending", "ModifyIndex": index, "ModifyTime": now_ns()}
            self.state.put_eval(ev, index)
            events.append(self._eval_event("EvaluationUpdated", ev))
            ids.append(eval_id)
        self.state.commit(index, events)
        for eval_id in ids:
            self._enqueue(eval_id)

    # --- allocations ------------------------------------------------------------------------

    def update_alloc_client(
        self,
        alloc_id: str,
        client_status: str,
        description: str,
        task_states: dict[str, Any],
    ) -> None:
        """A client node reports an allocation's progress (``Node.UpdateAlloc``)."""
        a = self.state.allocs.get(alloc_id)
        if a is None or a["ClientStatus"] == "lost" or not self.running:
            return
        was_terminal = a["ClientStatus"] in TERMINAL_CLIENT
        if was_terminal:
            # Task states keep arriving after the verdict (siblings being killed); the
            # verdict itself does not change.
            client_status, description = a["ClientStatus"], a["ClientDescription"]
        index = self.state.begin()
        now = now_ns()
        a = {
            **a,
            "ClientStatus": client_status,
            "ClientDescription": description,
            "TaskStates": task_states,
            "ModifyIndex": index,
            "ModifyTime": now,
        }
        self.state.put_alloc(a, index)
        events = [self._alloc_event("AllocationUpdated", a)]
        key = (a["Namespace"], a["JobID"])
        job = self.state.jobs.get(key)
        eval_id = ""
        if (
            client_status == "failed"
            and not was_terminal
            and a["DesiredStatus"] == "run"
            and job is not None
        ):
            ev = self._new_eval(job, index, "alloc-failure")
            self.state.put_eval(ev, index)
            events.append(self._eval_event("EvaluationUpdated", ev))
            eval_id = ev["ID"]
        self._refresh_job(key, index, events, etype="AllocationUpdated")
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        if client_status in TERMINAL_CLIENT and not was_terminal:
            self._unblock_soon()
            self._maybe_finish_drain(a["NodeID"])

    def stop_alloc(self, alloc_id: str) -> dict[str, Any]:
        a = self.state.allocs.get(alloc_id)
        if a is None:
            raise NomadError(404, "alloc not found")
        index = self.state.begin()
        a = {
            **a,
            "DesiredTransition": {**(a["DesiredTransition"] or {}), "Migrate": True},
            "ModifyIndex": index,
            "AllocModifyIndex": index,
        }
        self.state.put_alloc(a, index)
        events = [self._alloc_event("AllocationUpdateDesiredStatus", a)]
        job = self.state.jobs.get((a["Namespace"], a["JobID"])) or a["Job"]
        ev = self._new_eval(job, index, "alloc-stop")
        self.state.put_eval(ev, index)
        events.append(self._eval_event("AllocationUpdateDesiredStatus", ev))
        self._refresh_job(
            (a["Namespace"], a["JobID"]), index, events, etype="AllocationUpdateDesiredStatus"
        )
        self.state.commit(index, events)
        self._enqueue(ev["ID"])
        return {"EvalID": ev["ID"], "Index": index}

    # --- nodes ------------------------------------------------------------------------------

    def add_node(
        self,
        *,
        name: str | None = None,
        datacenter: str | None = None,
        cpu: int | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        meta: dict[str, str] | None = None,
        attributes: dict[str, str] | None = None,
        node_class: str = "",
        node_pool: str = "default",
        drivers: tuple[str, ...] = ("docker", "raw_exec"),
        reserved_cpu: int = 0,
        reserved_memory_mb: int = 0,
        reserved_ports: str = "",
        node_id: str | None = None,
    ) -> str:
        """Register a new client node (ready and eligible) and start its simulated client."""
        from .client import NodeClient

        cfg = self.config
        node_id = node_id or new_id()
        name = name or f"nomad-client-{len(self.state.nodes) + 1}"
        cpu = cfg.node_cpu if cpu is None else cpu
        memory_mb = cfg.node_memory if memory_mb is None else memory_mb
        disk_mb = cfg.node_disk if disk_mb is None else disk_mb
        ip = cfg.node_ip
        attrs = {
            "arch": "x86_64",
            "cpu.arch": "amd64",
            "cpu.modelname": "devstack simulated CPU",
            "cpu.numcores": str(max(1, cpu // 1000)),
            "cpu.frequency": "1000",
            "cpu.totalcompute": str(cpu),
            "cpu.reservablecores": str(max(1, cpu // 1000)),
            "kernel.name": "linux",
            "kernel.version": os.uname().release,
            "os.name": "ubuntu",
            "os.version": "22.04",
            "memory.totalbytes": str(memory_mb * 1024 * 1024),
            "unique.hostname": name,
            "unique.network.ip-address": ip,
            "unique.storage.bytestotal": str(disk_mb * 1024 * 1024),
            "unique.storage.bytesfree": str(disk_mb * 1024 * 1024),
            "unique.storage.volume": self.data_dir,
            "nomad.version": NOMAD_VERSION,
            "nomad.revision": "devstack",
            "nomad.service_discovery": "true",
            "nomad.advertise.address": self.http_addr,
            "os.signals": "SIGTERM,SIGKILL,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2",
        }
        for d in drivers:
            attrs[f"driver.{d}"] = "1"
        if d_consul := cfg.consul_addr:
            attrs.update(
                {
                    "consul.version": CONSUL_VERSION,
                    "consul.revision": "devstack",
                    "consul.server": "true",
                    "consul.datacenter": "dc1",
                    "consul.connect": "false",
                    "unique.consul.name": d_consul,
                }
            )
        attrs.update(attributes or {})
        now = now_ns()
        index = self.state.begin()
        node = {
            "ID": node_id,
            "SecretID": "",
            "Datacenter": datacenter or cfg.datacenter,
            "Name": name,
            "HTTPAddr": self.http_addr,
            "TLSEnabled": False,
            "Attributes": attrs,
            "NodeResources": {
                "Cpu": {
                    "CpuShares": cpu,
                    "TotalCpuCores": max(1, cpu // 1000),
                    "ReservableCpuCores": list(range(max(1, cpu // 1000))),
                },
                "Memory": {"MemoryMB": memory_mb},
                "Disk": {"DiskMB": disk_mb},
                "Networks": None,
                "NodeNetworks": [
                    {
                        "Mode": "host",
                        "Device": "lo",
                        "Addresses": [
                            {
                                "Family": "ipv4",
                                "Alias": "default",
                                "Address": ip,
                                "ReservedPorts": "",
                                "Gateway": "",
                            }
                        ],
                    }
                ],
                "Devices": None,
                "MinDynamicPort": 20000,
                "MaxDynamicPort": 32000,
            },
            "ReservedResources": {
                "Cpu": {"CpuShares": reserved_cpu},
                "Memory": {"MemoryMB": reserved_memory_mb},
                "Disk": {"DiskMB": 0},
                "Networks": {"ReservedHostPorts": reserved_ports},
            },
            "Links": {},
            "Meta": {**cfg.node_meta, **(meta or {})},
            "NodeClass": node_class,
            "NodePool": node_pool,
            "ComputedClass": "v1:" + str(abs(hash((node_class, node_pool))) % 10**18),
            "DrainStrategy": None,
            "SchedulingEligibility": "eligible",
            "Status": "ready",
            "StatusDescription": "",
            "StatusUpdatedAt": now // SECOND,
            "Events": [
                {
                    "Message": "Node registered",
                    "Subsystem": "Cluster",
                    "Details": None,
                    "Timestamp": rfc3339(now),
                    "CreateIndex": 0,
                }
            ],
            "Drivers": {
                d: {
                    "Attributes": {f"driver.{d}": "true"},
                    "Detected": True,
                    "Healthy": True,
                    "HealthDescription": "Healthy",
                    "UpdateTime": rfc3339(now),
                }
                for d in drivers
            },
            "HostVolumes": None,
            "HostNetworks": None,
            "CSIControllerPlugins": None,
            "CSINodePlugins": None,
            "LastDrain": None,
            "CreateIndex": index,
            "ModifyIndex": index,
        }
        self.state.put_node(node, index)
        self.state.commit(index, [self._node_event("NodeRegistration", node)])
        self.clients[node_id] = NodeClient(self, node_id)
        self._node_changed(node_id)
        return node_id

    def _node_changed(self, node_id: str) -> None:
        if not self.running and self._worker is None:
            return
        self._unblock_soon()
        # System jobs run on every node: a new or returning node gets their allocations.
        for job in list(self.state.jobs.values()):
            if job["Type"] in ("system", "sysbatch") and not job["Stop"]:
                index = self.state.begin()
                ev = self._new_eval(job, index, "node-update", node_id=node_id)
                self.state.put_eval(ev, index)
                self.state.commit(index, [self._eval_event("EvaluationUpdated", ev)])
                self._enqueue(ev["ID"])

    def node(self, node_id: str) -> dict[str, Any]:
        node = self.state.nodes.get(node_id)
        if node is None:
            raise NomadError(404, "node not found")
        return node

    def set_node_status(self, node_id: str, status: str) -> list[str]:
        """Mark a node ``down`` (its allocations become lost and are replaced) or ``ready``."""
        node = self.node(node_id)
        if status not in ("ready", "down", "initializing", "disconnected"):
            raise NomadError(400, f"invalid status for node: {status}")
        index = self.state.begin()
        now = now_ns()
        node = {
            **node,
            "Status": status,
            "StatusUpdatedAt": now // SECOND,
            "ModifyIndex": index,
            "Events": [
                *node["Events"],
                {
                    "Message": f"Node status changed to {status}",
                    "Subsystem": "Cluster",
                    "Details": None,
                    "Timestamp": rfc3339(now),
                    "CreateIndex": index,
                },
            ][-10:],
        }
        self.state.put_node(node, index)
        events = [self._node_event("NodeStreamEvent", node)]
        eval_ids: list[str] = []
        if status == "down":
            jobs: dict[JobKey, None] = {}
            for a in self.state.node_allocs(node_id):
                if alloc_client_terminal(a):
                    continue
                a = {
                    **a,
                    "ClientStatus": "lost",
                    "DesiredStatus": "stop",
                    "DesiredDescription": "alloc is lost since its node is down",
                    "ModifyIndex": index,
                    "AllocModifyIndex": index,
                    "ModifyTime": now,
                }
                self.state.put_alloc(a, index)
                events.append(self._alloc_event("PlanResult", a))
                jobs[(a["Namespace"], a["JobID"])] = None
            for key in jobs:
                job = self.state.jobs.get(key)
                if job is None:
                    continue
                ev = self._new_eval(job, index, "node-update", node_id=node_id)
                ev["NodeModifyIndex"] = index
                self.state.put_eval(ev, index)
                events.append(self._eval_event("EvaluationUpdated", ev))
                eval_ids.append(ev["ID"])
            for key in jobs:
                self._refresh_job(key, index, events)
        self.state.commit(index, events)
        client = self.clients.get(node_id)
        if status == "down" and client is not None:
            client.lose_all()
        for eval_id in eval_ids:
            self._enqueue(eval_id)
        if status == "ready":
            self._node_changed(node_id)
        return eval_ids

    def set_eligibility(self, node_id: str, body: Any) -> dict[str, Any]:
        node = self.node(node_id)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        elig = body.get("Eligibility")
        if elig not in ("eligible", "ineligible"):
            raise NomadError(
                400, f'invalid scheduling eligibility "{elig}"'.replace('"None"', '""')
            )
        if elig == "eligible" and node["DrainStrategy"] is not None:
            raise NomadError(
                500, "can not set node's scheduling eligibility to eligible while it is draining"
            )
        index = self.state.begin()
        node = {**node, "SchedulingEligibility": elig, "ModifyIndex": index}
        self.state.put_node(node, index)
        self.state.commit(index, [self._node_event("NodeEligibility", node)])
        if elig == "eligible":
            self._node_changed(node_id)
        return {
            "EvalIDs": None,
            "EvalCreateIndex": 0,
            "NodeModifyIndex": index,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def drain_node(self, node_id: str, body: Any) -> dict[str, Any]:
        node = self.node(node_id)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        spec = body.get("DrainSpec")
        mark_eligible = bool(body.get("MarkEligible"))
        index = self.state.begin()
        now = now_ns()
        events: list[Event] = []
        eval_ids: list[str] = []
        if spec is None:
            last = node["LastDrain"]
            if node["DrainStrategy"] is not None and last is not None:
                last = {**last, "Status": "canceled", "UpdatedAt": rfc3339(now)}
            node = {
                **node,
                "DrainStrategy": None,
                "LastDrain": last,
                "SchedulingEligibility": "eligible"
                if mark_eligible
                else node["SchedulingEligibility"],
                "ModifyIndex": index,
            }
        else:
            if not isinstance(spec, dict):
                raise NomadError(400, "invalid DrainSpec")
            deadline = int(spec.get("Deadline") or 0)
            node = {
                **node,
                "DrainStrategy": {
                    "DrainSpec": {
                        "Deadline": deadline,
                        "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs")),
                    },
                    "ForceDeadline": rfc3339(now + deadline) if deadline > 0 else None,
                    "StartedAt": rfc3339(now),
                },
                "SchedulingEligibility": "ineligible",
                "LastDrain": {
                    "StartedAt": rfc3339(now),
                    "UpdatedAt": rfc3339(now),
                    "Status": "draining",
                    "AccessorID": "",
                    "Meta": body.get("Meta"),
                },
                "ModifyIndex": index,
            }
            jobs: dict[JobKey, None] = {}
            for a in self.state.node_allocs(node_id):
                if alloc_terminal(a):
                    continue
                if spec.get("IgnoreSystemJobs") and a["Job"]["Type"] in ("system", "sysbatch"):
                    continue
                a = {
                    **a,
                    "DesiredTransition": {**(a["DesiredTransition"] or {}), "Migrate": True},
                    "ModifyIndex": index,
                }
                self.state.put_alloc(a, index)
                events.append(self._alloc_event("AllocationUpdateDesiredStatus", a))
                jobs[(a["Namespace"], a["JobID"])] = None
            for key in jobs:
                job = self.state.jobs.get(key)
                if job is None:
                    continue
                ev = self._new_eval(job, index, "node-drain", node_id=node_id)
                self.state.put_eval(ev, index)
                events.append(self._eval_event("EvaluationUpdated", ev))
                eval_ids.append(ev["ID"])
        self.state.put_node(node, index)
        events.insert(0, self._node_event("NodeDrain", node))
        self.state.commit(index, events)
        for eval_id in eval_ids:
            self._enqueue(eval_id)
        if spec is None and node["SchedulingEligibility"] == "eligible":
            self._node_changed(node_id)
        else:
            asyncio.get_running_loop().call_soon(self._maybe_finish_drain, node_id)
        return {
            "EvalIDs": eval_ids or None,
            "EvalCreateIndex": index if eval_ids else 0,
            "NodeModifyIndex": index,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def _maybe_finish_drain(self, node_id: str) -> None:
        node = self.state.nodes.get(node_id)
        if node is None or node["DrainStrategy"] is None:
            return
        if any(not alloc_client_terminal(a) for a in self.state.node_allocs(node_id)):
            return
        index = self.state.begin()
        now = now_ns()
        last = {**(node["LastDrain"] or {}), "Status": "complete", "UpdatedAt": rfc3339(now)}
        node = {**node, "DrainStrategy": None, "LastDrain": last, "ModifyIndex": index}
        self.state.put_node(node, index)
        self.state.commit(index, [self._node_event("NodeDrain", node)])

    # --- native service discovery (provider "nomad") -----------------------------------------

    def register_native(
        self, owner: str, alloc: dict[str, Any], regs: list[dict[str, Any]]
    ) -> None:
        index = self.state.begin()
        events = []
        node = self.state.nodes.get(alloc["NodeID"]) or {}
        for r in regs:
            entry = {
                "ID": r["ID"],
                "ServiceName": r["Name"],
                "Namespace": alloc["Namespace"],
                "NodeID": alloc["NodeID"],
                "Datacenter": node.get("Datacenter", self.config.datacenter),
                "JobID": alloc["JobID"],
                "AllocID": alloc["ID"],
                "Tags": r["Tags"],
                "Address": r["Address"],
                "Port": r["Port"],
                "CreateIndex": index,
                "ModifyIndex": index,
                "_owner": owner,
            }
            self.state.services[r["ID"]] = entry
            events.append(
                Event(
                    "Service",
                    "ServiceRegistration",
                    r["Name"],
                    alloc["Namespace"],
                    {"Service": {k: v for k, v in entry.items() if k != "_owner"}},
                )
            )
        self.state.touch("services", index)
        self.state.commit(index, events)

    def deregister_native(self, owner: str) -> None:
        gone = [s for s in self.state.services.values() if s["_owner"] == owner]
        if not gone:
            return
        index = self.state.begin()
        events = []
        for s in gone:
            del self.state.services[s["ID"]]
            events.append(
                Event(
                    "Service",
                    "ServiceDeregistration",
                    s["ServiceName"],
                    s["Namespace"],
                    {"Service": {k: v for k, v in s.items() if k != "_owner"}},
                )
            )
        self.state.touch("services", index)
        self.state.commit(index, events)
