"""The server's state store: tables, raft-like indexes, and wake-ups for blocking queries.

Nomad answers blocking queries with per-table indexes (``jobs``, ``allocs``, ...) and per-object
``ModifyIndex`` es, all drawn from one monotonically increasing raft index. Writes here take one
index, touch the tables they change, then :meth:`StateStore.commit` publishes their events and
wakes every waiting query. Stored objects are replaced, never mutated, so a reader (or an
event in the replay buffer) can hold one without copying.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from typing import Any

from .events import Event, EventBroker

JobKey = tuple[str, str]  # (namespace, job id)
TABLES = (
    "jobs",
    "job_version",
    "job_summary",
    "allocs",
    "evals",
    "nodes",
    "services",
    "deployment",
    "acl_token",
    "acl_policy",
)
TERMINAL_DEPLOYMENT = frozenset({"successful", "failed", "cancelled"})

TERMINAL_CLIENT = frozenset({"complete", "failed", "lost"})
TERMINAL_EVAL = frozenset({"complete", "failed", "canceled"})


def alloc_client_terminal(alloc: dict[str, Any]) -> bool:
    return alloc["ClientStatus"] in TERMINAL_CLIENT


def alloc_usage(a: dict[str, Any]) -> tuple[int, int, int]:
    """CPU shares, memory MB and disk MB an allocation holds on its node."""
    res = a["AllocatedResources"]
    cpu = sum(t["Cpu"]["CpuShares"] for t in res["Tasks"].values())
    mem = sum(t["Memory"]["MemoryMB"] for t in res["Tasks"].values())
    return cpu, mem, res["Shared"]["DiskMB"]


def alloc_host_ports(a: dict[str, Any]) -> list[int]:
    """Every host port an allocation holds: group ports and its tasks' own networks."""
    res = a["AllocatedResources"]
    values = [p["Value"] for p in res["Shared"]["Ports"] or []]
    for task in res["Tasks"].values():
        for net in task.get("Networks") or []:
            for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or []):
                values.append(p["Value"])
    return values


def alloc_terminal(alloc: dict[str, Any]) -> bool:
    """Nomad's ``TerminalStatus``: desired stop/evict, or the client is done with it."""
    return alloc["DesiredStatus"] in ("stop", "evict") or alloc_client_terminal(alloc)


class StateStore:
    def __init__(self) -> None:
        self.index = 1
        self.table_index: dict[str, int] = dict.fromkeys(TABLES, 1)
        self.jobs: dict[JobKey, dict[str, Any]] = {}
        self.versions: dict[JobKey, list[dict[str, Any]]] = {}
        self.summaries: dict[JobKey, dict[str, Any]] = {}
        self.allocs: dict[str, dict[str, Any]] = {}
        self.allocs_by_job: dict[JobKey, dict[str, None]] = defaultdict(dict)
        self.allocs_by_node: dict[str, dict[str, None]] = defaultdict(dict)
        self.evals: dict[str, dict[str, Any]] = {}
        self.evals_by_job: dict[JobKey, dict[str, None]] = defaultdict(dict)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.deployments_by_job: dict[JobKey, dict[str, None]] = defaultdict(dict)
        # What non-client-terminal allocations hold per node, kept as allocations are written
        # so that scheduling does not rescan every allocation for every evaluation.
        self.node_usage: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.node_ports: dict[str, Counter[int]] = defaultdict(Counter)
        self.broker = EventBroker()
        self._changed = asyncio.Event()

    # --- writes ----------------------------------------------------------------------------

    def begin(self) -> int:
        """Take the index of the next write."""
        self.index += 1
        return self.index

    def touch(self, table: str, index: int) -> None:
        self.table_index[table] = index

    def commit(self, index: int, events: list[Event]) -> None:
        self.broker.publish(index, events)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def put_job(self, job: dict[str, Any], index: int) -> None:
        self.jobs[(job["Namespace"], job["ID"])] = job
        self.touch("jobs", index)

    def _account(self, alloc: dict[str, Any] | None, sign: int) -> None:
        if alloc is None or alloc_client_terminal(alloc):
            return
        usage = self.node_usage[alloc["NodeID"]]
        for i, amount in enumerate(alloc_usage(alloc)):
            usage[i] += sign * amount
        ports = self.node_ports[alloc["NodeID"]]
        for value in alloc_host_ports(alloc):
            ports[value] += sign
            if ports[value] <= 0:
                del ports[value]

    def put_alloc(self, alloc: dict[str, Any], index: int) -> None:
        self._account(self.allocs.get(alloc["ID"]), -1)
        self._account(alloc, +1)
        self.allocs[alloc["ID"]] = alloc
        self.allocs_by_job[(alloc["Namespace"], alloc["JobID"])][alloc["ID"]] = None
        self.allocs_by_node[alloc["NodeID"]][alloc["ID"]] = None
        self.touch("allocs", index)

    def put_eval(self, ev: dict[str, Any], index: int) -> None:
        self.evals[ev["ID"]] = ev
        self.evals_by_job[(ev["Namespace"], ev["JobID"])][ev["ID"]] = None
        self.touch("evals", index)

    def put_deployment(self, d: dict[str, Any], index: int) -> None:
        self.deployments[d["ID"]] = d
        self.deployments_by_job[(d["Namespace"], d["JobID"])][d["ID"]] = None
        self.touch("deployment", index)

    def job_deployments(self, key: JobKey) -> list[dict[str, Any]]:
        """A job's deployments, newest first."""
        out = [self.deployments[d] for d in self.deployments_by_job.get(key, ())]
        return sorted(out, key=lambda d: d["CreateIndex"], reverse=True)

    def put_node(self, node: dict[str, Any], index: int) -> None:
        self.nodes[node["ID"]] = node
        self.touch("nodes", index)

    # --- reads -----------------------------------------------------------------------------

    def job_allocs(self, key: JobKey) -> list[dict[str, Any]]:
        return [self.allocs[a] for a in self.allocs_by_job.get(key, ())]

    def node_allocs(self, node_id: str) -> list[dict[str, Any]]:
        return [self.allocs[a] for a in self.allocs_by_node.get(node_id, ())]

    def job_evals(self, key: JobKey) -> list[dict[str, Any]]:
        return [self.evals[e] for e in self.evals_by_job.get(key, ())]

    async def wait_change(self, timeout: float) -> None:
        """Return after the next commit, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
