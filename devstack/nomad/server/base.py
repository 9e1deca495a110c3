"""The bottom of the server logic: state, the evaluation queue, and shared write helpers.

The server is composed in layers, one module per concern, each a class building on the one
below: this core; :mod:`.plan` (turning placements into allocations and committing a plan);
:mod:`.deployments` (deployments and their watcher); :mod:`.evals` (the evaluation worker and
Nomad's reconciler); :mod:`.nodes`; :mod:`.allocs` (client updates); :mod:`.jobs` (job
writes); :mod:`.services` (native service discovery); :mod:`.lifecycle` (dispatch, revert,
stable, scale); :mod:`.dryrun` (plan).
:class:`devstack.nomad.server.NomadServer` is the whole. Everything runs on the server's event
loop, so there are no locks. Client nodes are reached only through :class:`ClientHandle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
from typing import Any, Protocol

from devstack.nomad.config import NomadConfig
from devstack.nomad.events import Event
from devstack.nomad.scheduler import NodeInfo
from devstack.nomad.state import (
    TERMINAL_DEPLOYMENT,
    TERMINAL_EVAL,
    JobKey,
    StateStore,
    alloc_terminal,
)
from devstack.nomad.structs import rfc3339, strip_zero
from devstack.nomad.util import new_id, now_ns


class ClientHandle(Protocol):
    """What the server asks of a client node (``Node.UpdateAlloc``'s other direction)."""

    def run_alloc(self, alloc: dict[str, Any]) -> None: ...

    def stop_alloc(self, alloc_id: str) -> None: ...

    def update_alloc(self, alloc: dict[str, Any]) -> None: ...

    def lose_all(self) -> None: ...

    async def shutdown(self) -> None: ...


class ServerCore:
    """State, the evaluation queue, and the helpers every write path shares."""

    def __init__(self, config: NomadConfig | None = None) -> None:
        self.config = config or NomadConfig()
        self.state = StateStore()
        self.rng = random.Random(self.config.seed)
        self.leader = "127.0.0.1:4647"
        self.http_addr = "127.0.0.1:4646"
        self.rpc_port = 4647
        self.serf_port = 4648
        self.clients: dict[str, ClientHandle] = {}
        # job -> group -> scaling events, newest first (``/v1/job/<id>/scale``)
        self.scaling_events: dict[JobKey, dict[str, list[dict[str, Any]]]] = {}
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
        await self._stopped()
        self.state.broker.close()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- hooks the composed cluster fills in ------------------------------------------------

    def add_node(self, *, name: str | None = None) -> str:
        raise NotImplementedError

    async def _eval_worker(self) -> None:
        raise NotImplementedError

    def _maybe_finish_drain(self, node_id: str) -> None:
        """A node's allocation stopped; a drain waiting on it may be done (see nodes)."""

    def _drain_progress(self) -> None:
        """An allocation's health is known: a paced drain may move the next ones (see nodes)."""

    def _attach_client(self, node_id: str) -> None:
        """A node registered: start the client that runs its allocations (none by default)."""

    def _deployment_for_plan(
        self,
        job: dict[str, Any] | None,
        key: JobKey,
        placed: list[dict[str, Any]],
        stops: dict[str, str],
        index: int,
        events: list[Event],
    ) -> None:
        """A plan is being committed: create or cancel its deployment (see deployments)."""

    async def _stopped(self) -> None:
        """Everything is stopped; release what the composition added (Consul sync)."""

    # --- helpers ----------------------------------------------------------------------------

    def _job_status(self, job: dict[str, Any]) -> str:
        key = (job["Namespace"], job["ID"])
        if (
            job["Type"] in ("system", "sysbatch")
            or job["Periodic"] is not None
            or (job["ParameterizedJob"] is not None and not job["Dispatched"])
        ):
            return "dead" if job["Stop"] else "running"
        if any(not alloc_terminal(a) for a in self.state.job_allocs(key)) or any(
            d["Status"] not in TERMINAL_DEPLOYMENT for d in self.state.job_deployments(key)
        ):
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
